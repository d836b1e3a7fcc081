"""Keypoints on ordinary photos: find each face, align it, predict, map the points back.

  python -m facekp.serve.predict --model=runs/effnet_aug --images=photos/ --out=predictions/

--model is a workdir, an export folder, a .keras file, a SavedModel directory or a .tflite file
(facekp.serve.export).
--images is one photo or a folder (searched recursively; the formats facekp.core.images reads).

Each photo is read with facekp.core.images.load_rgb and its faces found, ordered (largest first),
named and cropped by facekp.data.faces, the routine make_tfrecords uses: the FFHQ-style crop of
facekp.data.align that `make_tfrecords --align` writes, at the model's input size. The model
predicts on each crop, and the inverse of the crop's matrix takes the points back into the photo's
pixels. Before the first photo, the keypoint record of the model's training data (the export's
model_card.json, export_report.json or schema.json, or the workdir's dataset) is checked: its
coordinate convention, its crop and (an export's) input size. facekp.load (facekp.api) reads photos
through the same functions.
Written into --out:
  predictions.csv  the columns of face_keypoints.csv: image_name, width, height,
                   point_1_x ... point_K_y (pixels of the photo), status, photo (the photo's
                   name under --images). One row per face, named as make_tfrecords --align
                   names its crops ("dir/a_f0.png" for the largest face of "dir/a.jpg", then
                   _f1, ...; up to --max_faces; "dir/a.jpg_f0.png" when another photo such as
                   "dir/a.png" has the same stem). status is "ok", or "face_mismatch" /
                   "no_face" for a face whose crop make_tfrecords would drop too (points -1).
                   A photo without a face has one row under its own name: "no_face", or the
                   reason facekp.core.images gave for a file it could not read (points -1,
                   width and height 0), as make_tfrecords writes them.
  predictions.json the same faces with named points, the face's box in the photo (the aligned
                   square's corners and their bounding box), the crop (size and the matrix
                   from photo to crop pixels) and the overlay's path (null when none was drawn).
  overlays/<photo name>.png  the photo with each face's points and its aligned crop's outline
                   (--nooverlays skips them: they take most of the time). A photo whose overlay
                   name the file system cannot hold keeps its points; the last line counts it.
  predictions.journal  each photo's results as they come: a run that is interrupted keeps
                   them, and the same command continues where it stopped. A rerun predicts
                   again on every photo whose content changed (its sha256 is compared).
A photo that fails never stops the rest of the folder.
"""
import collections
import contextlib
import errno
import os
import typing

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from facekp.core import checks
from facekp.core import dataset_info
from facekp.core import drawing
from facekp.core import files
from facekp.core import images as images_lib
from facekp.core import journal as journal_lib
from facekp.core import keypoint_csv
from facekp.core import keypoints as keypoints_lib
from facekp.core import schema as schema_lib
from facekp.core.keypoint_csv import OK
from facekp.data import align
from facekp.data import face_mesh
from facekp.data import faces as faces_lib
from facekp.serve import loading
from facekp.serve import model_card

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
JOURNAL = "predictions.journal"
EXPORT_REPORT = "export_report.json"
# Files of an export that hold {"schema": ..., "keypoints": ...}, the model card first.
EXPORT_RECORDS = (model_card.CARD_FILE, EXPORT_REPORT)
MAX_FACES = 100  # --max_faces


# --- What the model was trained on -------------------------------------------------------------


def _model_dirs(model_path):
  model_dir = model_path if tf.io.gfile.isdir(model_path) else os.path.dirname(model_path)
  model_dir = model_dir.rstrip("/") or "."
  return model_dir, os.path.dirname(model_dir) or "."


class TrainingRecord(typing.NamedTuple):
  """What is known of a model's training data: its schema (a dict, or None), its keypoints record
  (facekp.core.keypoints.metadata, or None), the file that record was read from, and whether
  that file is an export's (a model card or export report: its input_size is the model's own)."""
  schema: typing.Optional[dict]
  record: typing.Optional[dict]
  where: typing.Optional[str]
  from_export: bool = False


def _record_files(directory):
  """The files that may hold the training record, in the order they are believed."""
  candidates = [f"{directory}/{name}" for name in (*EXPORT_RECORDS, dataset_info.SCHEMA_FILE)]
  if tf.io.gfile.exists(f"{directory}/config.json"):
    data_dir = files.read_json(f"{directory}/config.json", "config", expect=dict).get(
        "data_dir")
    if data_dir and isinstance(data_dir, str):
      candidates.append(f"{data_dir}/{dataset_info.SCHEMA_FILE}")
  return candidates


def training_records(model_path):
  """The TrainingRecord of a model, from the first of: the export's model_card.json and
  export_report.json ("schema" and "keypoints" entries) and schema.json, beside the model or in
  its folder's parent, then the dataset named by a workdir's config.json (its schema.json)."""
  schema = record = where = None
  from_export = False
  for directory in _model_dirs(str(model_path)):
    for path in filter(tf.io.gfile.exists, _record_files(directory)):
      content = files.read_json(path, expect=dict)
      is_export = path.endswith(tuple(f"/{name}" for name in EXPORT_RECORDS))
      found = content.get("schema") if is_export else content
      _check_record_shape(path, "schema", found)
      found_record = content.get("keypoints") or (found or {}).get("keypoints")
      _check_record_shape(path, "keypoints", found_record)
      if schema is None and found and "mesh_indices" in found:
        schema_lib.Schema.from_dict(found, path)  # a ValueError naming the file if it is none
        schema = found
      if record is None and found_record:
        record, where, from_export = found_record, path, is_export
  return TrainingRecord(schema, record, where, from_export)


def _check_record_shape(path, name, value):
  if value is not None and not isinstance(value, dict):
    raise files.damaged(path, f"its {name} record must be an object, not "
                              f"{files.json_type(value)}")


def find_schema(model_path):
  """The schema of the model's training data (see training_records), or None."""
  schema = training_records(model_path).schema
  return schema_lib.Schema.from_dict(schema) if schema else None


def check_training_record(record, where, *, image_size=None):
  """Refuses a model trained on another keypoint convention, or (given the model's input
  `image_size`) a record of another input size; warns when its training crops are not facekp's
  alignment (predict's crops would then differ from what it learnt on)."""
  if record is None:
    logging.warning("no keypoint record of the model's training data found%s: cannot check "
                    "that predict crops faces as its training data was cropped",
                    f" (read {where})" if where else "")
    return
  if record.get("coordinates") != keypoints_lib.CONVENTION:
    raise ValueError(f"{where}: the model was trained on {record.get('coordinates')!r} "
                     f"keypoint coordinates, but predict uses {keypoints_lib.CONVENTION!r}")
  recorded_size = record.get("input_size")
  if image_size is not None and recorded_size is not None and recorded_size != image_size:
    raise ValueError(f"{where}: records an input size of {recorded_size} px, but the model takes "
                     f"{image_size} px: this record belongs to another model (export it again)")
  crop = str(record.get("crop", ""))
  if not keypoints_lib.is_aligned_crop(crop):
    logging.warning("%s: the model was trained on images cropped %r, but predict feeds it "
                    "facekp's FFHQ-style crops (%s): its points may be off; train on a dataset "
                    "made with make_tfrecords --align for photos", where, crop,
                    keypoints_lib.crop_method(1)[:-1] + "<size>")


def point_names(schema, num_keypoints):
  """(slot names, CSV columns) of a model's K keypoints: its schema's, or point_1 ... point_K when
  there is no schema of K slots."""
  if schema is not None and schema.num_keypoints == num_keypoints:
    return schema.names, schema.csv_point_columns
  names = tuple(f"point_{k + 1}" for k in range(num_keypoints))
  return names, tuple(f"{n}_{axis}" for n in names for axis in "xy")


class CheckedModel(typing.NamedTuple):
  """A loaded model (facekp.serve.loading.KeypointModel) whose training record was checked, the
  names of its slots and their CSV columns, and its schema (None when unknown)."""
  model: typing.Any
  names: tuple
  columns: tuple
  schema: typing.Optional[schema_lib.Schema]


def load_checked_model(model_path):
  """Loads any model format (facekp.serve.loading.load) and checks what it was trained on
  (check_training_record) before it sees a photo: every reader of photos starts here."""
  model = loading.load(model_path)
  found = training_records(model.path)
  check_training_record(found.record, found.where,
                        image_size=model.image_size if found.from_export else None)
  schema = schema_lib.Schema.from_dict(found.schema) if found.schema else None
  num_keypoints = model(np.zeros((1, model.image_size, model.image_size, 3), np.uint8)).shape[1]
  return CheckedModel(model, *point_names(schema, num_keypoints), schema)


# --- One photo -------------------------------------------------------------------------------


@contextlib.contextmanager
def face_finder(max_faces):
  """The facekp.data.faces.Finder that predict finds up to `max_faces` faces a photo with; its
  MediaPipe graphs are closed on leaving."""
  with face_mesh.FaceMesh(faces_lib.search_limit(max_faces)) as photo_mesh, \
      face_mesh.FaceMesh(max_faces=1) as crop_mesh, face_mesh.FaceDetector() as detector:
    yield faces_lib.Finder(photo_mesh, crop_mesh, detector)


class FaceResult(collections.namedtuple("FaceResult", "face points outline")):
  """A cropped face (facekp.data.faces.Face) and its predicted points in the photo, or None."""


def predict_faces(model, finder, image, stem, max_faces):
  """Up to `max_faces` faces of a photo, largest first, named by its crop stem
  (facekp.data.faces): [FaceResult]."""
  size = model.image_size
  found = faces_lib.aligned_faces(finder, stem, image, size, max_faces)
  good = [face.crop for face in found if face.status == OK]
  predicted = iter(keypoints_lib.to_pixels(model(np.stack(good)), size) if good else [])
  corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
  results = []
  for face in found:
    to_photo = align.invert(face.matrix)
    points = align.transform_points(to_photo, next(predicted)) if face.status == OK else None
    results.append(FaceResult(face, points, align.transform_points(to_photo, corners)))
  return results


def overlay_path(out_dir, name):
  return f"{out_dir}/overlays/{name}.png"


def _face_json(photo_name, k, result, names, model_size, overlay):
  face = result.face
  outline = result.outline
  entry = {"photo": photo_name, "face": k, "image_name": face.name, "status": face.status,
           "points": None, "box": {"corners": outline.round(3).tolist(),
                                   "bounds": [*outline.min(0).round(3), *outline.max(0).round(3)]},
           "crop": {"size": model_size, "method": keypoints_lib.crop_method(model_size),
                    "photo_to_crop": face.matrix.round(6).tolist()},
           "overlay": overlay}
  if result.points is not None:
    entry["points"] = {n: [float(x), float(y)] for n, (x, y) in zip(names, result.points)}
  return entry


class PhotoPredictor:
  """Predicts on one photo at a time with a model and a face finder, writing its overlay."""

  def __init__(self, model, finder, out_dir, max_faces, names, overlays):
    self.model, self.finder, self.out_dir = model, finder, out_dir
    self.max_faces, self.names, self.overlays = max_faces, names, overlays

  def __call__(self, path, name, stem):
    """(journal stamp of the bytes read or None, keypoint rows, JSON entries) of one photo's
    faces, the rows naming `name` as their photo; a bad photo gives one row with its reason."""
    stamp, rows, entries = self._predict(path, name, stem)
    return stamp, [row._replace(photo=name) for row in rows], entries

  def _predict(self, path, name, stem):
    k = len(self.names)
    stamp = None
    try:
      data = images_lib.read_bytes(path)
      stamp = journal_lib.stamp_of(path, data)
      image = images_lib.decode_rgb(data, path)
      results = predict_faces(self.model, self.finder, image, stem, self.max_faces)
    except images_lib.ImageError as e:
      logging.warning("skipping %s", e)
      return stamp, [keypoint_csv.missing_row(name, k, e.reason)], []
    except faces_lib.FACE_ERRORS as e:
      # One odd file must not stop a folder; the row and the log say what happened.
      logging.warning("%s: %s: %s", name, type(e).__name__, e)
      return stamp, [keypoint_csv.missing_row(name, k, "error")], []
    height, width = image.shape[:2]
    if not results:
      return stamp, [keypoint_csv.missing_row(name, k, "no_face", width, height)], []
    overlay = self._overlay(image, name, results)
    rows = [keypoint_csv.KeypointRow(r.face.name, width, height, tuple(r.points.ravel()), OK)
            if r.points is not None else
            keypoint_csv.missing_row(r.face.name, k, r.face.status, width, height)
            for r in results]
    entries = [_face_json(name, i, r, self.names, self.model.image_size, overlay)
               for i, r in enumerate(results)]
    return stamp, rows, entries

  def _overlay(self, image, name, results):
    """Draws the photo's overlay; its path relative to out_dir, or None when none was drawn
    (--nooverlays, no face predicted, or a name the file system cannot hold: the points are
    kept all the same)."""
    found = [(r.points, r.outline) for r in results if r.points is not None]
    if not self.overlays or not found:
      return None
    path = overlay_path(self.out_dir, name)
    try:
      tf.io.gfile.makedirs(os.path.dirname(path))
      with files.atomic_path(path) as tmp:
        drawing.photo_overlay(tmp, image, found, self.names)
    except OSError as e:
      if e.errno != errno.ENAMETOOLONG:
        raise
      logging.warning("%s: no overlay: %s", name, e.strerror)
      return None
    return path[len(self.out_dir) + 1:]


# --- A folder --------------------------------------------------------------------------------


def photo_list(images_path, exclude=()):
  """(path, image_name) of one photo or of every photo under a folder."""
  if tf.io.gfile.isdir(images_path):
    root = images_path.rstrip("/")
    photos = [(f"{root}/{name}", name) for name in images_lib.list_images(root, exclude)]
    if not photos:
      raise ValueError(f"--images={images_path}: no photos in this folder (looked for files "
                       f"ending in {', '.join(images_lib.IMAGE_EXTENSIONS)})")
    return photos
  if not tf.io.gfile.exists(images_path):
    raise FileNotFoundError(f"--images={images_path}: no such file or folder")
  return [(images_path, os.path.basename(images_path))]


def _write_outputs(out_dir, rows, entries, columns):
  files.atomic_write(f"{out_dir}/{PREDICTIONS_CSV}", keypoint_csv.csv_text(rows, columns))
  files.write_json(f"{out_dir}/{PREDICTIONS_JSON}", {"faces": entries})


def predict_images(model_path, images_path, out_dir, max_faces=1, overlays=True):
  """Predicts on every photo; writes predictions.csv / .json and overlays; returns the rows.

  Holds a lock on out_dir; results go to its journal as they come, so an interrupted run keeps
  them and the same call continues.
  """
  checks.input_path("model", model_path, "model (workdir, .keras, SavedModel or .tflite)")
  checks.input_path("images", images_path, "photo or folder of photos")
  checks.output_folder("out", out_dir)
  checks.integer("max_faces", max_faces, 1, MAX_FACES)
  with files.explain_disk_full(out_dir, "--out"):
    return _predict_images(model_path, images_path, out_dir, max_faces, overlays)


def _predict_images(model_path, images_path, out_dir, max_faces, overlays):
  photos = photo_list(images_path, exclude=[out_dir])
  model, names, columns, _ = load_checked_model(model_path)
  with files.folder_lock(out_dir, "--out"):
    files.remove_temporaries(out_dir)
    fingerprint = {"model": os.path.abspath(model_path), "max_faces": max_faces,
                   "overlays": overlays}
    journal = journal_lib.Journal(f"{out_dir}/{JOURNAL}", fingerprint)
    stems = faces_lib.crop_stems([name for _, name in photos])
    done = _up_to_date(journal.read(), photos, stems, out_dir)
    todo = [(path, name) for path, name in photos if name not in done]
    if done:
      logging.info("%d photos: %d predicted before, %d to do", len(photos), len(done), len(todo))
    try:
      with face_finder(max_faces) as finder:
        predictor = PhotoPredictor(model, finder, out_dir, max_faces, names, overlays)
        for i, (path, name) in enumerate(todo):
          stamp, rows, entries = predictor(path, name, stems[name])
          journal.append([(name, stamp, rows, entries)])
          done[name] = journal_lib.Entry(stamp, rows, entries)
          if (i + 1) % 100 == 0 or i + 1 == len(todo):
            logging.info("predicted %d / %d photos", i + 1, len(todo))
    except KeyboardInterrupt:
      print(f"interrupted after {len(done)} of {len(photos)} photos: their predictions are kept "
            f"in {out_dir}/{JOURNAL}; run the same command again to continue", flush=True)
      raise
    finally:
      journal.close()
    rows = [row for _, name in photos for row in done[name].rows]
    entries = [e for _, name in photos for e in done[name].extra or []]
    _write_outputs(out_dir, rows, entries, columns)
  print(_summary(len(photos), out_dir, rows, entries if overlays else []), flush=True)
  return rows


def _up_to_date(journal_entries, photos, stems, out_dir):
  """{photo name: journal Entry} of the listed photos whose entry still holds what predicting
  gives now: the file's content is the same (its hash) and its faces are named by the stem
  the listing gives it. The overlays of the others are deleted: they are drawn again."""
  done = {}
  for path, name in photos:
    entry = journal_entries.get(name)
    if entry is None:
      continue
    if journal_lib.unchanged(path, entry.stamp) and all(
        row.image_name == name or faces_lib.is_face_of(row.image_name, stems[name])
        for row in entry.rows):
      done[name] = entry
    else:
      files.remove_quietly(overlay_path(out_dir, name))
  return done


def _summary(num_photos, out_dir, rows, entries):
  """The line predict ends with: faces found, rows by status, overlays that could not be
  written (`entries`: the JSON entries of a run that draws overlays, else [])."""
  counts = collections.Counter(row.status for row in rows)
  no_overlay = {e["photo"] for e in entries if e["points"] and e.get("overlay", "") is None}
  return (f"{num_photos} photos -> {out_dir}/{PREDICTIONS_CSV}: {counts.pop(OK, 0)} faces"
          + "".join(f", {n} {status}" for status, n in sorted(counts.items()))
          + (f"; {len(no_overlay)} overlay(s) not written (name too long)" if no_overlay else ""))


def define_flags():
  flags.DEFINE_string("model", None, "Workdir, export folder, .keras file, SavedModel directory "
                      "or .tflite file.", required=True)
  flags.DEFINE_string("images", None, "A photo or a folder of photos.", required=True)
  flags.DEFINE_string("out", None, "Output folder (predictions.csv, overlays/).", required=True)
  flags.DEFINE_integer("max_faces", 1, "Faces per photo, largest first (1 to 100).")
  flags.DEFINE_bool("overlays", True, "Draw an overlay PNG per photo (most of the run time).")


def main(argv):
  predict_images(flags.FLAGS.model, flags.FLAGS.images, flags.FLAGS.out,
                 max_faces=flags.FLAGS.max_faces, overlays=flags.FLAGS.overlays)


run = cli.command(main, define_flags)  # the facekp-predict command (python -m facekp.serve.predict)


if __name__ == "__main__":
  run()
