"""Keypoints on ordinary photos: find each face, align it, predict, map the points back.

  python -m facekp.predict --model=runs/effnet_aug --images=photos/ --out=predictions/

--model is a workdir, a .keras file, a SavedModel directory or a .tflite file (facekp.export).
--images is one photo or a folder (searched recursively; the formats facekp.images reads).

Each photo is read with facekp.images.load_rgb; MediaPipe Face Mesh finds the faces; each face is
cropped by facekp.annotate.crop_face at the model's input size (the FFHQ-style crop of
facekp.align that `make_tfrecords --align` writes, placed by Face Mesh on a first crop), the
model predicts on the crop, and the inverse of the crop's matrix takes the points back into the
photo's pixels. Written into --out:
  predictions.csv  the columns of face_keypoints.csv: image_name, width, height,
                   point_1_x ... point_K_y (pixels of the photo), status. One row per photo for
                   its largest face; with --max_faces=N up to N faces, largest first, the second
                   and later named "<image_name>#face<k>". status is "ok"; "no_face" (points
                   -1); "face_mismatch" or "no_face" for a face whose crop make_tfrecords would
                   drop too; or the reason facekp.images gave for a file it could not read
                   (points -1, width and height 0), as make_tfrecords writes them.
  overlays/<image_name>.png  the photo with each face's points and its aligned crop's outline
                   (--nooverlays skips them: they take most of the time).
A photo that fails never stops the rest of the folder.
"""
import collections
import csv
import io
import json
import os

from facekp import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from facekp import align
from facekp import annotate
from facekp import dataset
from facekp import export
from facekp import images as images_lib
from facekp import plots
from facekp import schema as schema_lib

# MediaPipe is asked for a few faces even when one is wanted, so that "largest" is a real choice.
FACE_SEARCH_LIMIT = 5


def find_schema(model_path):
  """The schema.json beside a model (export/, workdir) or of its workdir's dataset, or None."""
  model_dir = model_path if tf.io.gfile.isdir(model_path) else os.path.dirname(model_path)
  model_dir = model_dir.rstrip("/") or "."
  for directory in (model_dir, os.path.dirname(model_dir) or "."):
    if tf.io.gfile.exists(f"{directory}/{dataset.SCHEMA_FILE}"):
      return schema_lib.Schema.load(f"{directory}/{dataset.SCHEMA_FILE}")
    if tf.io.gfile.exists(f"{directory}/config.json"):
      with tf.io.gfile.GFile(f"{directory}/config.json") as f:
        data_dir = json.load(f).get("data_dir")
      if data_dir and tf.io.gfile.exists(f"{data_dir}/{dataset.SCHEMA_FILE}"):
        return dataset.load_schema(data_dir)
  return None


def face_size(landmarks_px):
  """Side of the face's aligned crop in the photo's pixels: what "largest face" means here."""
  _, half_side, _ = align.face_square(landmarks_px)
  return float(np.hypot(*half_side))


def predict_faces(model, photo_mesh, crop_mesh, image, max_faces):
  """Up to `max_faces` faces of a photo, largest first, each cropped as make_tfrecords --align does.

  Returns a list of (status, points [K, 2] in the photo's pixels or None, crop outline [4, 2]);
  status is "ok" or why annotate.crop_face rejected the face ("no_face", "face_mismatch").
  """
  size = model.image_size
  faces = sorted(photo_mesh.detect(image), key=face_size, reverse=True)[:max_faces]
  corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
  crops = [annotate.crop_face(crop_mesh, image, landmarks, size) for landmarks in faces]
  good = [crop for crop, _, _, status in crops if status == dataset.OK]
  keypoints = iter(model(np.stack(good)) * size if good else [])
  results = []
  for _, matrix, _, status in crops:
    to_photo = align.invert(matrix)
    points = align.transform_points(to_photo, next(keypoints)) if status == dataset.OK else None
    results.append((status, points, align.transform_points(to_photo, corners)))
  return results


def overlay_path(out_dir, name):
  return f"{out_dir}/overlays/{name}.png"


def predict_photo(model, meshes, path, name, out_dir, max_faces, names, overlays):
  """dataset.KeypointRow per face of one photo (overlay written); a bad photo gives its reason."""
  k = len(names)
  try:
    image = images_lib.load_rgb(path)
    faces = predict_faces(model, *meshes, image, max_faces)
  except images_lib.ImageError as e:
    logging.warning("skipping %s", e)
    return [dataset.missing_row(name, k, e.reason)]
  except Exception as e:  # pylint: disable=broad-except
    # One odd file must not stop a folder; the row and the log say what happened.
    logging.warning("%s: %s: %s", name, type(e).__name__, e)
    return [dataset.missing_row(name, k, "error")]
  height, width = image.shape[:2]
  if not faces:
    return [dataset.missing_row(name, k, "no_face", width, height)]
  found = [(points, outline) for status, points, outline in faces if status == dataset.OK]
  if overlays and found:
    overlay = overlay_path(out_dir, name)
    tf.io.gfile.makedirs(os.path.dirname(overlay))
    plots.photo_overlay(overlay, image, found, names)
  rows = []
  for i, (status, points, _) in enumerate(faces):
    face_name = name if i == 0 else f"{name}#face{i + 1}"
    rows.append(dataset.KeypointRow(face_name, width, height, tuple(points.ravel()), status)
                if status == dataset.OK else
                dataset.missing_row(face_name, k, status, width, height))
  return rows


def photo_list(images_path):
  """(path, image_name) of one photo or of every photo under a folder."""
  if tf.io.gfile.isdir(images_path):
    root = images_path.rstrip("/")
    return [(f"{root}/{name}", name) for name in images_lib.list_images(root)]
  if not tf.io.gfile.exists(images_path):
    raise FileNotFoundError(f"--images={images_path}: no such file or folder")
  return [(images_path, os.path.basename(images_path))]


def predict_images(model_path, images_path, out_dir, max_faces=1, overlays=True):
  """Predicts on every photo; writes out_dir/predictions.csv and overlays; returns the rows."""
  if max_faces < 1:
    raise ValueError(f"max_faces must be at least 1, got {max_faces}")
  model = export.load(model_path)
  photos = photo_list(images_path)
  schema = find_schema(model_path)
  num_keypoints = model(np.zeros((1, model.image_size, model.image_size, 3), np.uint8)).shape[1]
  if schema is not None and schema.num_keypoints == num_keypoints:
    names, columns = schema.names, schema.csv_point_columns
  else:
    names = tuple(f"point_{k + 1}" for k in range(num_keypoints))
    columns = tuple(f"point_{k + 1}_{axis}" for k in range(num_keypoints) for axis in "xy")
  tf.io.gfile.makedirs(out_dir)
  rows = []
  with annotate.FaceMesh(max_faces=max(max_faces, FACE_SEARCH_LIMIT)) as photo_mesh, \
      annotate.FaceMesh(max_faces=1) as crop_mesh:
    for i, (path, name) in enumerate(photos):
      rows += predict_photo(model, (photo_mesh, crop_mesh), path, name, out_dir, max_faces,
                            names, overlays)
      if (i + 1) % 100 == 0 or i + 1 == len(photos):
        logging.info("predicted %d / %d photos", i + 1, len(photos))
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["image_name", "width", "height", *columns, "status"])
  writer.writerows(dataset.format_csv_fields(row) for row in rows)
  with tf.io.gfile.GFile(f"{out_dir}/predictions.csv", "w") as f:
    f.write(text.getvalue())
  counts = collections.Counter(row.status for row in rows)
  print(f"{len(photos)} photos -> {out_dir}/predictions.csv: {counts.pop(dataset.OK, 0)} faces"
        + "".join(f", {n} {status}" for status, n in sorted(counts.items())), flush=True)
  return rows


def define_flags():
  flags.DEFINE_string("model", None, "Workdir, .keras file, SavedModel directory or .tflite file.",
                      required=True)
  flags.DEFINE_string("images", None, "A photo or a folder of photos.", required=True)
  flags.DEFINE_string("out", None, "Output folder (predictions.csv, overlays/).", required=True)
  flags.DEFINE_integer("max_faces", 1, "Faces per photo, largest first.")
  flags.DEFINE_bool("overlays", True, "Draw an overlay PNG per photo (most of the run time).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  predict_images(f.model, f.images, f.out, max_faces=f.max_faces, overlays=f.overlays)


def run():
  """The facekp-predict command (python -m facekp.predict)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
