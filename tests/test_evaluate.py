"""Tests for facekp.eval.evaluate: flip TTA, and whole workdirs scored on each split and on another
dataset, each into its own folder."""
import json
import os
import re

import keras
import numpy as np
from PIL import Image
import pytest

from facekp.core import keypoints as keypoints_lib
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.core import workdir as workdir_lib
from facekp.eval import evaluate
from facekp.input import input_pipeline

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
SIZE = 64
PICTURES = ("faces", "faces_perturbed", "worst_faces", "ced")


class CentroidModel(keras.Model):
  """Flip-equivariant by construction: each slot is the centroid of a weighted channel.

  Slot 0 (self-mirror) weighs red evenly; the eye pair weighs green by u + 0.1 and 1.1 - u
  (u = x / W), the mouth pair blue by u^2 + 0.1 and (1 - u)^2 + 0.1. Mirroring the image
  mirrors each pair's weights, so it swaps the pair's centroids and maps x to 1 - x.
  """

  def call(self, images):
    images = keras.ops.cast(images, "float32") + 1.0
    size = keras.ops.shape(images)[1]
    centres = (keras.ops.cast(keras.ops.arange(size), "float32") + 0.5) / keras.ops.cast(
        size, "float32")
    u = centres[None, None, :]
    v = centres[None, :, None]
    red, green, blue = images[..., 0], images[..., 1], images[..., 2]
    heatmaps = [red, green * (u + 0.1), blue * (u ** 2 + 0.1), green * (1.1 - u),
                blue * ((1 - u) ** 2 + 0.1)]
    points = []
    for h in heatmaps:
      total = keras.ops.sum(h, axis=(1, 2))
      points.append(keras.ops.stack([keras.ops.sum(h * u, axis=(1, 2)) / total,
                                     keras.ops.sum(h * v, axis=(1, 2)) / total], axis=-1))
    return keras.ops.stack(points, axis=1)


def test_flip_tta_on_an_equivariant_model_gives_back_its_points():
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  model = CentroidModel()
  direct = evaluate.predict(model, images)
  mirrored = evaluate.predict(model, images[:, :, ::-1])
  assert np.abs(direct - mirrored).max() > 1e-3  # the mirror alone gives other points
  np.testing.assert_allclose(keypoints_lib.mirror(mirrored, SCHEMA.flip_permutation), direct,
                             atol=1e-5)
  np.testing.assert_allclose(evaluate.predict_flip_tta(model, images, SCHEMA.flip_permutation),
                             direct, atol=1e-5)


def _png_size(path):
  with Image.open(path) as image:
    return image.size


@pytest.fixture(scope="module")
def trained(tmp_path_factory, labelled_dataset):
  """A workdir (model, config, history; no recorded training mean) and its dataset."""
  root = tmp_path_factory.mktemp("evaluate")
  data_dir, workdir = root / "data", root / "workdir"
  data_dir.mkdir()
  workdir.mkdir()
  labelled_dataset(str(data_dir), sample.sample_faces(SIZE))
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(10, activation="sigmoid")(x)
  keras.Model(inputs, keras.layers.Reshape((5, 2))(x)).save(workdir / "model.keras")
  (workdir / "config.json").write_text(json.dumps(
      {"data_dir": str(data_dir), "image_size": SIZE, "huber_delta": 1.0}))
  (workdir / "history.csv").write_text(
      "epoch,loss,mae_px,val_loss,val_mae_px\n0,0.01,5.0,0.02,6.0\n1,0.005,3.0,0.01,4.0\n")
  return root, data_dir, workdir


@pytest.fixture(scope="module")
def test_metrics(trained):
  _, _, workdir = trained
  return evaluate.evaluate_workdir(str(workdir), tta_flip=True)


def test_evaluate_workdir_writes_metrics_pictures_and_table(trained, test_metrics, capfd):
  _, data_dir, workdir = trained
  metrics = test_metrics
  out = workdir / "eval" / "test"
  assert json.loads((out / "metrics.json").read_text()) == metrics
  assert metrics["name"] == metrics["split"] == "test"
  assert metrics["num_faces"] == 9 and metrics["image_size"] == SIZE
  # No recorded training mean: recomputed from the config's dataset, and recorded as such.
  assert metrics["mean_shape_source"] == f"{data_dir} train split"
  for protocol in ("aligned", "perturbed"):
    results = metrics[protocol]
    assert set(results) >= {"model", "model_flip_tta", "mean_shape", "teacher_floor",
                            "gap_closed_mae_px", "gap_closed_nme"}
    for key in ("mae", "mae_px", "huber", "nme", "failure_rate_0.10", "failure_rate_0.05",
                "auc_0.10", "per_keypoint_mae_px"):
      assert key in results["model"], key
  floor = metrics["aligned"]["teacher_floor"]
  assert floor is not None and floor["num_faces"] + floor["num_left_out"] == 9
  # The perturbed faces are warped: their labels moved with them.
  assert metrics["perturbed"]["mean_shape"]["mae_px"] > metrics["aligned"]["mean_shape"]["mae_px"]
  for name in PICTURES:
    assert (out / "pictures" / f"test_{name}.png").exists(), name
  assert _png_size(out / "pictures" / "training_curves.png") == (900, 350)
  assert not (workdir / "metrics.json").exists() and not (workdir / "pictures").exists()


def test_each_split_and_dataset_gets_its_own_outputs(trained, test_metrics, labelled_dataset,
                                                     capsys):
  root, _, workdir = trained
  test_json = (workdir / "eval" / "test" / "metrics.json").read_text()
  validation = evaluate.evaluate_workdir(str(workdir), split="validation")
  out = workdir / "eval" / "validation"
  assert validation["split"] == validation["name"] == "validation"
  assert json.loads((out / "metrics.json").read_text()) == validation
  for name in PICTURES:
    assert (out / "pictures" / f"validation_{name}.png").exists(), name
  assert (workdir / "eval" / "test" / "metrics.json").read_text() == test_json  # untouched
  printed = capsys.readouterr().out
  assert "on the validation split (9 faces" in printed
  assert f"wrote {out}/: metrics.json, pictures/validation_faces.png" in printed

  # Another dataset with only a test split: the mean shape is the recorded training mean.
  other = root / "other_faces"
  other.mkdir()
  labelled_dataset(str(other), sample.sample_faces(SIZE)[:4], splits=("test",), seed=1)
  mean = np.full((5, 2), 0.5)
  workdir_lib.write_train_mean(workdir, mean, "somewhere", 9)
  scored = evaluate.evaluate_workdir(str(workdir), data_dir=str(other), pictures=False)
  out = workdir / "eval" / scored["name"]
  assert re.fullmatch(r"other_faces-[0-9a-f]{6}-test", scored["name"])
  assert json.loads((out / "metrics.json").read_text()) == scored
  assert scored["num_faces"] == 4 and scored["data_dir"] == str(other)
  assert scored["mean_shape_source"].endswith(workdir_lib.TRAIN_MEAN)
  labels = input_pipeline.load_arrays(str(other), "test", image_size=SIZE)["keypoints"]
  assert scored["aligned"]["mean_shape"]["mae_px"] == pytest.approx(
      np.abs(keypoints_lib.to_pixels(labels - 0.5, SIZE)).mean(), rel=1e-5)
  assert f"on the test split of {other}" in capsys.readouterr().out
  # The dataset the model was trained on, named by another spelling of its path, is its own.
  assert evaluate.output_name(f"{root}/data/", f"{root}/data", "test") == "test"
  assert re.fullmatch(r"faces-[0-9a-f]{6}-test",
                      evaluate.output_name("gs://b/faces", f"{root}/data", "test"))


def test_two_datasets_of_one_folder_name_get_two_outputs(trained, labelled_dataset, capsys):
  """a/data and b/data, each evaluated: neither overwrites the other, and each says where it
  went."""
  root, _, workdir = trained
  scored = {}
  for parent, seed in (("a", 1), ("b", 2)):
    data_dir = root / parent / "data"
    data_dir.mkdir(parents=True)
    labelled_dataset(str(data_dir), sample.sample_faces(SIZE)[:3], splits=("test",), seed=seed)
    scored[parent] = evaluate.evaluate_workdir(str(workdir), data_dir=str(data_dir),
                                               pictures=False)
    out = workdir / "eval" / scored[parent]["name"]
    assert f"wrote {out}/: metrics.json" in capsys.readouterr().out
  assert scored["a"]["name"] != scored["b"]["name"]
  assert all(re.fullmatch(r"data-[0-9a-f]{6}-test", m["name"]) for m in scored.values())
  for parent, metrics in scored.items():
    written = json.loads((workdir / "eval" / metrics["name"] / "metrics.json").read_text())
    assert written == metrics and written["data_dir"] == str(root / parent / "data")
  assert scored["a"]["aligned"]["model"] != scored["b"]["aligned"]["model"]
  # The same dataset named by another path (a link) is the same dataset: the same folder.
  os.symlink(root / "a" / "data", root / "link")
  assert evaluate.output_name(f"{root}/link", None, "test") == "test"
  assert evaluate.output_name(f"{root}/link", f"{root}/x", "test") == scored["a"]["name"]
