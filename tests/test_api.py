"""Tests for facekp's Python API (facekp.api): the stages as functions on one small run, the
README's example as written, the Predictor's points against predict's, and its input rules."""
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

import facekp
from facekp import api
from facekp.core import cli
from facekp.core import images
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.serve import export
from facekp.serve import model_card
from facekp.serve import predict

import test_train  # pylint: disable=wrong-import-order  (its synthetic dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
README_MARK = "<!-- python-api -->"
RUN = "runs/sample/tiny"  # where the README's example looks for its model, from its folder
SPLITS = {"train": 8, "validation": 4, "test": 4}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A folder holding runs/sample/{data,tiny}: a synthetic dataset, and the tiny config trained
  (a few steps), evaluated and exported through the API."""
  root = tmp_path_factory.mktemp("api")
  data_dir, workdir = str(root / "runs/sample/data"), str(root / RUN)
  test_train.write_dataset(data_dir, sizes=tuple(SPLITS.items()), size=SIZE)
  metrics = facekp.train_model("tiny", workdir=workdir, data_dir=data_dir,
                               overrides={"feature_stride": 8, "num_epochs": 2})
  report = facekp.export_model(workdir=workdir, tflite=("float32",), max_images=4)
  return root, data_dir, workdir, metrics, report


@pytest.fixture(scope="module")
def model(run):
  with facekp.load(run[2]) as predictor:
    yield predictor


def python_blocks_of_readme():
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  _, section, _ = text.split(README_MARK)
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_import_facekp_loads_neither_tensorflow_nor_mediapipe():
  code = ("import facekp, sys\n"
          "heavy = ('tensorflow', 'keras', 'mediapipe', 'cv2')\n"
          "facekp.Face, facekp.Crop, facekp.load, facekp.train_model\n"
          "print(sorted(m for m in heavy if m in sys.modules), facekp.__version__)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["[]", facekp.__version__]


def test_the_api_does_not_hide_the_subpackages():
  from facekp.train import loop  # pylint: disable=g-import-not-at-top
  assert facekp.train.loop is loop and callable(facekp.train_model)
  assert set(facekp.__all__) >= {"load", "Predictor", "Face", "make_dataset", "train_model",
                                 "evaluate_model", "export_model", "__version__"}
  with pytest.raises(AttributeError, match="no attribute 'nothing'"):
    facekp.nothing  # pylint: disable=pointless-statement
  assert api.DEFAULT_TFLITE == export.TFLITE_VARIANTS


def test_the_stages_run_as_functions(run):
  _, _, workdir, metrics, report = run
  assert metrics["epochs"] == 2
  test = metrics["test"]  # tiny evaluates at the end
  assert test["num_faces"] == SPLITS["test"]
  assert json.loads(open(f"{workdir}/eval/test/metrics.json").read()) == test
  again = facekp.evaluate_model(workdir=workdir, pictures=False)
  assert again["aligned"]["model"] == test["aligned"]["model"]
  assert set(report["models"]) == {"keras", "saved_model", "tflite_float32"}
  source = json.loads(open(f"{workdir}/config_source.json").read())
  assert source == {"config_file": os.path.join(cli.CONFIGS_DIR, "tiny.py"), "cwd": os.getcwd()}


def test_the_readme_example_runs_as_written(run):
  root = run[0]
  first = python_blocks_of_readme()[0]
  assert f'"{RUN}"' in first and "sample_photo(" in first
  result = subprocess.run([sys.executable, "-c", first], cwd=str(root), capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  for name in schema_lib.LANDMARK_NAMES.values():
    assert name in result.stdout


def test_points_are_predicts_to_a_ten_thousandth_of_a_pixel(run, model, tmp_path):
  workdir = run[2]
  photo = sample.sample_photo("multi_face.jpg")
  rows = predict.predict_images(workdir, photo, str(tmp_path / "out"), max_faces=3,
                                overlays=False)
  faces = model.predict(photo, max_faces=3)
  assert len(faces) == len(rows) == 3 and all(row.status == "ok" for row in rows)
  for face, row in zip(faces, rows):
    np.testing.assert_allclose(face.points, np.reshape(row.points, (-1, 2)), atol=1e-4, rtol=0)
  entries = json.loads((tmp_path / "out" / predict.PREDICTIONS_JSON).read_text())["faces"]
  for face, entry in zip(faces, entries):
    assert face.box == pytest.approx(entry["box"]["bounds"], abs=1e-3)
    np.testing.assert_allclose(face.crop.photo_to_crop[:2], entry["crop"]["photo_to_crop"],
                               atol=1e-5)
    assert face.crop.photo_to_crop[2].tolist() == [0, 0, 1]


def test_a_face_names_its_points_in_the_schemas_slot_order(model):
  (face,) = model.predict(sample.sample_photo("astronaut.jpg"))
  schema = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
  assert face.names == schema.names == model.names
  assert list(face.landmarks) == list(schema.names)
  np.testing.assert_array_equal(list(face.landmarks.values()), face.points)
  assert face.points.shape == (5, 2) and face.corners.shape == (4, 2)
  assert face.crop.size == SIZE == model.image_size and face.crop.method == "facekp_align_64"
  x0, y0, x1, y1 = face.box
  assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
  with pytest.raises(ValueError):
    face.points[0, 0] = 1.0  # read-only, as the dataclass is frozen


def test_arrays_and_pil_images_are_read_as_files_are(model, tmp_path):
  photo = images.load_rgb(sample.sample_photo("astronaut.jpg"))
  from_file = model.predict(sample.sample_photo("astronaut.jpg"))[0].points
  np.testing.assert_allclose(model.predict(photo)[0].points, from_file, atol=1e-6)
  np.testing.assert_allclose(model.predict(Image.fromarray(photo))[0].points, from_file,
                             atol=1e-6)
  # Grayscale and RGBA arrays: the pixels load_rgb gives for the same image as a file.
  gray = np.asarray(Image.fromarray(photo).convert("L"))
  alpha = np.full(gray.shape, 255, np.uint8)
  alpha[:40, :40] = 0
  alpha[40:80, :40] = 100
  rgba = np.dstack([photo, alpha])
  for array, name in ((gray, "gray.png"), (rgba, "rgba.png")):
    Image.fromarray(array).save(tmp_path / name)
    file_pixels = images.load_rgb(str(tmp_path / name))
    np.testing.assert_array_equal(images.array_to_rgb(array), file_pixels)
  np.testing.assert_array_equal(images.array_to_rgb(gray[:, :, None]), images.array_to_rgb(gray))
  (from_gray,) = model.predict(gray)
  np.testing.assert_allclose(from_gray.points, model.predict(str(tmp_path / "gray.png"))[0].points,
                             atol=1e-6)
  assert len(model.predict(rgba)) == 1


def test_no_face_is_an_empty_list(model):
  assert model.predict(np.full((120, 90, 3), 128, np.uint8)) == []
  assert model.predict_batch([np.zeros((50, 50), np.uint8),
                              sample.sample_photo("astronaut.jpg")])[0] == []


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((64, 64, 3), np.float32), ValueError, "must be uint8"),
    (np.zeros((64, 64, 2), np.uint8), ValueError, "not of shape \\[64, 64, 2\\]"),
    (np.zeros((0, 64, 3), np.uint8), ValueError, "with H, W > 0"),
    (np.zeros((2, 64, 64, 3), np.uint8), ValueError, "not of shape"),
    (42, TypeError, "not a int"),
])
def test_bad_arrays_are_one_line_errors(model, image, error, message):
  with pytest.raises(error, match=message) as raised:
    model.predict(image)
  assert "\n" not in str(raised.value)


def test_bad_files_are_image_errors_with_a_reason(model, tmp_path):
  (tmp_path / "notes.jpg").write_text("not pixels")
  for path, reason in ((tmp_path / "missing.jpg", "missing"), (tmp_path / "notes.jpg",
                                                               "not_an_image"),
                       (tmp_path, "not_a_regular_file")):
    with pytest.raises(images.ImageError) as raised:
      model.predict(path)
    assert raised.value.reason == reason and "\n" not in str(raised.value)


def test_max_faces_and_a_closed_predictor(run):
  predictor = facekp.load(run[2])
  with pytest.raises(ValueError, match="max_faces must be an integer of at least 1"):
    predictor.predict(sample.sample_photo("astronaut.jpg"), max_faces=0)
  with predictor:
    assert len(predictor.predict(sample.sample_photo("multi_face.jpg"), max_faces=2)) == 2
  with pytest.raises(ValueError, match="closed"):
    predictor.predict(sample.sample_photo("astronaut.jpg"))


@pytest.mark.parametrize("name", ["model.keras", "export", "export/saved_model",
                                  "export/model_float32.tflite"])
def test_load_reads_every_format_to_the_same_points(run, model, name):
  photo = sample.sample_photo("astronaut.jpg")
  with facekp.load(os.path.join(run[2], name)) as other:
    np.testing.assert_allclose(other.predict(photo)[0].points, model.predict(photo)[0].points,
                               atol=1e-3)
    assert other.names == model.names


def test_load_says_what_is_not_a_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a keypoint model"):
    facekp.load(tmp_path)
  with pytest.raises(FileNotFoundError, match="no such model file"):
    facekp.load(tmp_path / "model.tflite")


def test_the_model_card_describes_the_run(run):
  _, data_dir, workdir, metrics, _ = run
  card = json.loads(open(f"{workdir}/export/{model_card.CARD_FILE}").read())
  assert card["keypoints"]["coordinates"] == "continuous" and card["input"]["input_size"] == SIZE
  assert [m["name"] for m in card["landmarks"]] == list(schema_lib.LANDMARK_NAMES.values())
  assert [m["mesh_index"] for m in card["landmarks"]] == [1, 33, 61, 263, 291]
  assert [m["mirror_slot"] for m in card["landmarks"]] == [0, 3, 4, 1, 2]
  assert card["schema"]["flip_permutation"] == [0, 3, 4, 1, 2]
  assert card["training_data"]["faces"] == SPLITS
  assert card["training_data"]["data_dir"] == data_dir
  aligned = card["accuracy"]["aligned"]
  assert aligned["model"]["mae_px"] == metrics["test"]["aligned"]["model"]["mae_px"]
  assert aligned["mean_shape"]["nme"] == metrics["test"]["aligned"]["mean_shape"]["nme"]
  assert "teacher_floor" in aligned  # None here: MediaPipe finds no face in synthetic dots
  training = card["training"]
  assert training["config_file"] == os.path.join(cli.CONFIGS_DIR, "tiny.py")
  assert training["overrides"] == {"feature_stride": 8, "num_epochs": 2}
  assert training["command"] == (
      f"python -m facekp.main --config={cli.CONFIGS_DIR}/tiny.py --workdir={workdir} "
      f"--config.data_dir={data_dir} --config.feature_stride=8 --config.num_epochs=2")
  readme = open(f"{workdir}/export/{model_card.README_FILE}").read()
  assert training["command"] in readme and "| 3 | left_eye_outer | 263 | 1 |" in readme


def test_train_model_takes_a_config_dict_and_refuses_bad_fields(tmp_path):
  config = test_train.small_config("nowhere")
  with pytest.raises(ValueError, match="overrides: augment.flp: no such config field"):
    facekp.train_model(config, workdir=tmp_path, overrides={"augment.flp": 0.5})
  with pytest.raises(ValueError, match="overrides: num_epochs='x'"):
    facekp.train_model(config, workdir=tmp_path, overrides={"num_epochs": "x"})
  with pytest.raises(FileNotFoundError, match="nor one of facekp's configs .*tiny"):
    facekp.train_model("tiniest", workdir=tmp_path)
  with pytest.raises(ValueError, match="learning_rate=-1"):  # config_rules.validate
    facekp.train_model(config, workdir=tmp_path, overrides={"learning_rate": -1.0})
  with pytest.raises(FileNotFoundError, match="config.data_dir=nowhere: no such directory"):
    facekp.train_model(config, workdir=tmp_path)
  assert not os.listdir(tmp_path)  # every mistake is found before a file is written
  resolved, config_file = api.resolve_config("tiny", data_dir="d", overrides={"augment.flip": 0})
  assert (config_file, resolved.data_dir, resolved.augment.flip) == (
      os.path.join(cli.CONFIGS_DIR, "tiny.py"), "d", 0)
  assert config.data_dir == "nowhere"  # the caller's ConfigDict is left as it was
