"""Tests for facekp.serve.predict: points found on an aligned crop land where they belong in the photo."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from facekp.core import images
from facekp.core import keypoints
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.data import align
from facekp.data import face_mesh as face_mesh_lib
from facekp.data import faces
from facekp.serve import predict
from conftest import copies_of

SIZE = 64
SAMPLE = sample.SAMPLE_DIR
SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))


def constant_model(path, keypoints):
  """A real Keras model whose output is `keypoints` [K, 2] (normalised) for every image."""
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  x = keras.layers.Dense(keypoints.size, kernel_initializer="zeros",
                         bias_initializer=keras.initializers.Constant(keypoints.reshape(-1)))(x)
  keras.Model(inputs, keras.layers.Reshape(keypoints.shape)(x)).save(path)


@pytest.fixture(scope="module")
def astronaut():
  """The sample photo, its Face Mesh landmarks and the schema's points in its pixels."""
  photo = images.load_rgb(os.path.join(SAMPLE, "astronaut.jpg"))
  with face_mesh_lib.FaceMesh(max_faces=1) as face_mesh:
    (landmarks,) = face_mesh.detect(photo)
  return photo, landmarks, landmarks[list(SCHEMA.mesh_indices)]


def read_rows(out_dir):
  with open(out_dir / "predictions.csv", newline="") as f:
    return {row["image_name"]: row for row in csv.DictReader(f)}


def points_of(row):
  return np.array([float(row[c]) for c in SCHEMA.csv_point_columns]).reshape(-1, 2)


def test_predict_maps_crop_points_back_into_each_photo(tmp_path, astronaut):
  photo, landmarks, true_points = astronaut
  # A model that always answers the crop positions of this face's keypoints.
  with face_mesh_lib.FaceMesh(max_faces=1) as face_mesh:
    _, matrix, _, status = faces.crop_face(face_mesh, photo, landmarks, SIZE)
  assert status == "ok"
  model_path = tmp_path / "model.keras"
  constant_model(model_path, align.transform_points(matrix, true_points) / SIZE)
  # The training data's record beside the model, as an export writes it: names the points.
  (tmp_path / "schema.json").write_text(json.dumps(dict(
      SCHEMA.to_dict(), keypoints=keypoints.metadata(keypoints.crop_method(SIZE), SIZE))))

  # The same face rotated, enlarged and moved inside a bigger canvas: its keypoints move with it.
  angle, scale = 25.0, 1.3
  to_canvas = cv2.getRotationMatrix2D((128.0, 128.0), angle, scale)
  to_canvas[:, 2] += (90.0, 40.0)
  photos = tmp_path / "photos"
  photos.mkdir()
  shutil.copy(os.path.join(SAMPLE, "astronaut.jpg"), photos / "astronaut.jpg")
  # cv2 puts pixel centres at integers: shift by half a pixel in and out (continuous coords).
  cv2_matrix = to_canvas.copy()
  cv2_matrix[:, 2] += to_canvas[:, :2] @ [0.5, 0.5] - 0.5
  canvas = cv2.warpAffine(photo, cv2_matrix, (480, 400))
  Image.fromarray(canvas).save(photos / "canvas.png")
  Image.fromarray(np.full((80, 60, 3), 128, np.uint8)).save(photos / "blank.png")
  (photos / "broken.jpg").write_bytes(b"this is not a photo")

  out = tmp_path / "out"
  predict.predict_images(str(model_path), str(photos), str(out))

  rows = read_rows(out)
  # Faces are named as make_tfrecords --align names its crops; a photo without one by itself.
  assert list(rows) == ["astronaut_f0.png", "blank.png", "broken.jpg", "canvas_f0.png"]
  assert (rows["astronaut_f0.png"]["width"], rows["astronaut_f0.png"]["height"]) == ("256", "256")
  np.testing.assert_allclose(points_of(rows["astronaut_f0.png"]), true_points, atol=0.01)
  assert rows["canvas_f0.png"]["status"] == "ok"
  assert (rows["canvas_f0.png"]["width"], rows["canvas_f0.png"]["height"]) == ("480", "400")
  # MediaPipe sees the moved face afresh, so allow its own jitter (a few pixels at 1.3x).
  canvas_error = np.linalg.norm(points_of(rows["canvas_f0.png"]) -
                                align.transform_points(to_canvas, true_points), axis=1)
  assert canvas_error.max() < 4.0, canvas_error
  assert rows["blank.png"]["status"] == "no_face"
  assert np.all(points_of(rows["blank.png"]) == -1)
  assert rows["broken.jpg"]["status"] == "not_an_image"
  for name, size in (("astronaut.jpg", (1000, 1000)), ("canvas.png", (1000, 833))):
    with Image.open(out / "overlays" / f"{name}.png") as overlay:
      assert overlay.size == size
  assert not (out / "overlays" / "blank.png.png").exists()
  # The JSON: named points, the face's box and the crop, for the same faces.
  (face,) = [f for f in json.loads((out / "predictions.json").read_text())["faces"]
             if f["photo"] == "astronaut.jpg"]
  assert (face["face"], face["image_name"], face["status"]) == (0, "astronaut_f0.png", "ok")
  assert list(face["points"]) == list(SCHEMA.names)
  np.testing.assert_allclose(list(face["points"].values()), true_points, atol=0.01)
  np.testing.assert_allclose(face["crop"]["photo_to_crop"], matrix, atol=1e-5)
  corners = np.array(face["box"]["corners"])
  np.testing.assert_allclose(align.transform_points(matrix, corners),
                             [[0, 0], [SIZE, 0], [SIZE, SIZE], [0, SIZE]], atol=1e-2)


def test_max_faces_adds_a_row_per_face_largest_first(tmp_path):
  model_path = tmp_path / "model.keras"
  constant_model(model_path, np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4],
                                       [0.65, 0.7]], np.float32))
  out = tmp_path / "out"
  predict.predict_images(str(model_path), os.path.join(SAMPLE, "multi_face.jpg"), str(out),
                         max_faces=3)
  rows = read_rows(out)
  assert list(rows) == ["multi_face_f0.png", "multi_face_f1.png", "multi_face_f2.png"]
  assert all(r["status"] == "ok" for r in rows.values())
  # The same crop points span more photo pixels on a bigger face: the largest comes first
  # (ranked on the photo's landmarks; the refined crops of similar faces may swap places).
  points = [points_of(r) for r in rows.values()]
  eye_distance = [np.linalg.norm(p[1] - p[3]) for p in points]
  assert eye_distance[0] == max(eye_distance)
  centres = np.array([p.mean(axis=0) for p in points])
  assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 50


def test_missing_images_path_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file or folder"):
    predict.photo_list(str(tmp_path / "nowhere"))


def test_an_empty_folder_is_an_error_not_an_empty_result(tmp_path):
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "notes.txt").write_text("no photo here")
  with pytest.raises(ValueError, match="no photos in this folder"):
    predict.photo_list(str(tmp_path / "photos"))


def test_a_fifo_named_jpg_is_a_row_with_a_reason_not_a_hang(tmp_path):
  model_path = tmp_path / "model.keras"
  constant_model(model_path, np.full((5, 2), 0.5, np.float32))
  os.mkfifo(tmp_path / "pipe.jpg")
  rows = predict.predict_images(str(model_path), str(tmp_path / "pipe.jpg"), str(tmp_path / "o"))
  assert [(r.image_name, r.status) for r in rows] == [("pipe.jpg", "not_a_regular_file")]


def test_a_model_trained_on_another_convention_is_refused():
  with pytest.raises(ValueError, match="'pixel_centres' keypoint coordinates"):
    predict.check_training_record({"coordinates": "pixel_centres", "crop": "facekp_align_64"},
                                  "x/schema.json")
  predict.check_training_record(keypoints.metadata(keypoints.crop_method(128), 128), "x")


def test_an_interrupted_run_keeps_its_predictions_and_continues(tmp_path):
  """SIGTERM mid-folder: the run says what it kept; the same command finishes the rest."""
  model_path = tmp_path / "model.keras"
  constant_model(model_path, np.full((5, 2), 0.5, np.float32))
  photos = copies_of(str(tmp_path / "photos"), "astronaut.jpg", 12)
  out = tmp_path / "out"
  command = [sys.executable, "-m", "facekp.serve.predict", f"--model={model_path}",
             f"--images={photos}", f"--out={out}", "--nooverlays"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
  journal = out / predict.JOURNAL
  while run.poll() is None and (not journal.exists() or journal.read_text().count("#commit") < 2):
    time.sleep(0.01)
  run.terminate()
  stdout, _ = run.communicate(timeout=60)
  kept = journal.read_text().count("#commit")
  assert "interrupted after" in stdout and "run the same command again" in stdout
  assert 0 < kept < 12 and not (out / "predictions.csv").exists()
  rows = predict.predict_images(str(model_path), str(photos), str(out), overlays=False)
  assert [r.image_name for r in rows] == [f"p{i:02d}_f0.png" for i in range(12)]
  assert len(read_rows(out)) == 12
