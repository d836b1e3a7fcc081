"""Tests for facekp.evaluate: metrics against hand-computed values, flip TTA, the whole workdir."""
import json

import keras
import numpy as np
import pytest
from PIL import Image

from facekp import dataset
from facekp import evaluate
from facekp import export
from facekp import plots
from facekp import schema as schema_lib

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
EYES = SCHEMA.eye_slots  # (1, 3)


def _faces_with_known_nme():
  """Three faces, pixels: inter-ocular distances 10, 20, 10; NME 0.12, 0.02, 0.06."""
  true = np.zeros((3, 5, 2))
  true[0, 3] = (10, 0)
  true[1, 3] = (20, 0)
  true[2, 3] = (10, 0)
  pred = true.copy()
  pred[0, 0] += (0, 6)   # error 6 on one of 5 points: mean 1.2, / 10
  pred[1, 2] += (0, 2)   # mean 0.4, / 20
  pred[2, 4] += (3, 0)   # mean 0.6, / 10
  return pred, true


def test_nme_failure_rate_ced_auc_by_hand():
  pred, true = _faces_with_known_nme()
  nme = evaluate.nme_per_image(pred, true, EYES)
  np.testing.assert_allclose(nme, [0.12, 0.02, 0.06])
  assert evaluate.failure_rate(nme, 0.10) == pytest.approx(1 / 3)
  assert evaluate.failure_rate(nme, 0.05) == pytest.approx(2 / 3)
  np.testing.assert_allclose(evaluate.ced(nme, [0, 0.02, 0.05, 0.10, 0.12]),
                             [0, 1 / 3, 1 / 3, 2 / 3, 1])
  # AUC to 0.10: faces contribute 1 - nme / 0.1 clipped at 0: (0 + 0.8 + 0.4) / 3.
  assert evaluate.auc(nme) == pytest.approx(0.4)
  thresholds = np.linspace(0, 0.1, 100001)
  assert np.trapz(evaluate.ced(nme, thresholds), thresholds) / 0.1 == pytest.approx(0.4, abs=1e-4)


def test_nme_rejects_faces_without_eye_distance():
  true = np.zeros((1, 5, 2))
  with pytest.raises(ValueError, match="eye corners"):
    evaluate.nme_per_image(true + 1, true, EYES)


def test_huber_and_keypoint_metrics_by_hand():
  assert evaluate.huber([0.5, 2.0], [0.0, 0.0], delta=1.0) == pytest.approx((0.125 + 1.5) / 2)
  pred, true = _faces_with_known_nme()
  m = evaluate.keypoint_metrics(pred / 100, true / 100, 100, SCHEMA.names, EYES)
  # Absolute coordinate errors: 6, 2 and 3 px among 3 faces * 5 points * 2 axes.
  assert m["mae_px"] == pytest.approx(11 / 30)
  assert m["mae"] == pytest.approx(11 / 30 / 100)
  assert m["nme"] == pytest.approx((0.12 + 0.02 + 0.06) / 3)
  assert m["failure_rate_0.10"] == pytest.approx(1 / 3)
  assert m["auc_0.10"] == pytest.approx(0.4)
  assert m["per_keypoint_mae_px"] == pytest.approx(
      {"nose_tip": 1.0, "right_eye_outer": 0.0, "right_mouth_corner": 1 / 3,
       "left_eye_outer": 0.0, "left_mouth_corner": 0.5})


def test_gap_closed():
  assert evaluate.gap_closed({"nme": 0.03}, {"nme": 0.05}, {"nme": 0.01}, "nme") == \
      pytest.approx(0.5)
  assert evaluate.gap_closed({"nme": 0.03}, {"nme": 0.05}, None, "nme") is None
  assert evaluate.gap_closed({"nme": 0.03}, {"nme": 0.05}, {"nme": 0.06}, "nme") is None


def test_unmirror_keypoints_maps_x_and_swaps_slots():
  mirrored = np.array([[[0.5, 0.6], [0.1, 0.2], [0.2, 0.8], [0.7, 0.25], [0.9, 0.75]]])
  back = evaluate.unmirror_keypoints(mirrored, SCHEMA.flip_permutation)
  # Mirror slot 1 (image left) is the original's slot 3 (image right), and so on.
  np.testing.assert_allclose(
      back, [[[0.5, 0.6], [0.3, 0.25], [0.1, 0.75], [0.9, 0.2], [0.8, 0.8]]])


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
  mirrored = evaluate.predict(model, evaluate.mirror_images(images))
  assert np.abs(direct - mirrored).max() > 1e-3  # the mirror alone gives other points
  np.testing.assert_allclose(evaluate.predict_flip_tta(model, images, SCHEMA.flip_permutation),
                             direct, atol=1e-5)


def test_perturbed_protocol_is_fixed_and_moves_labels_with_the_faces():
  size = 64
  rng = np.random.default_rng(2)
  keypoints = rng.uniform(0.35, 0.65, (4, 5, 2)).astype(np.float32)
  images = np.zeros((4, size, size, 3), np.uint8)
  for image, (x, y) in zip(images, keypoints[:, 0] * size):
    image[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 255  # a blob at the nose tip
  warped, moved = evaluate.perturb(images, keypoints, SCHEMA.flip_permutation)
  again = evaluate.perturb(images, keypoints, SCHEMA.flip_permutation)
  np.testing.assert_array_equal(warped, again[0])
  np.testing.assert_array_equal(moved, again[1])
  assert np.abs(moved - keypoints).mean() * size > 1.0  # the faces did move
  for image, point in zip(warped, moved[:, 0] * size):
    weight = image[..., 0].astype(np.float64)
    rows, cols = np.mgrid[:size, :size] + 0.5
    centre = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
    assert np.linalg.norm(centre - point) < 1.0, (centre, point)


def _png_size(path):
  with Image.open(path) as image:
    return image.size


def test_pictures_have_the_expected_size(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
  true = rng.uniform(4, 28, (6, 5, 2))
  plots.face_grid(tmp_path / "grid.png", images, true, true + 1, SCHEMA.names, columns=4)
  assert _png_size(tmp_path / "grid.png") == (4 * 200, 2 * 200 + 90)
  plots.ced_curves(tmp_path / "ced.png", [("a", {"model": [0.01, 0.2]}), ("b", {"m": [0.05]})])
  assert _png_size(tmp_path / "ced.png") == (1000, 400)
  history = tmp_path / "history.csv"
  history.write_text("epoch,loss,mae,val_loss,val_mae\n0,1.0,0.5,1.1,0.6\n1,0.5,0.3,0.7,0.4\n")
  plots.training_curves(tmp_path / "curves.png", plots.read_history(str(history)))
  assert _png_size(tmp_path / "curves.png") == (900, 350)
  plots.photo_overlay(tmp_path / "photo.png", np.zeros((50, 100, 3), np.uint8),
                      [(true[0], np.array([[0, 0], [10, 0], [10, 10], [0, 10]]))], SCHEMA.names,
                      max_inches=4)
  assert _png_size(tmp_path / "photo.png") == (400, 200)


def write_tiny_dataset(data_dir, faces):
  """The sample faces as a facekp dataset (train and test), with made-up plausible keypoints."""
  keypoints = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]],
                       np.float32)
  rng = np.random.default_rng(0)
  spec = dataset.features(SCHEMA.num_keypoints)
  size = faces.shape[1]
  for split in ("train", "validation", "test"):
    examples = []
    for i, face in enumerate(faces):
      points = keypoints + rng.normal(0, 0.01, keypoints.shape).astype(np.float32)
      examples.append({"image": face, "image_name": f"{split}_{i}.png", "height": size,
                       "width": size, "keypoints_px": points * size, "keypoints": points})
    dataset.write_shard(dataset.shard_path(data_dir, split, 0, 1), examples, spec)
  dataset.write_metadata(data_dir, spec, SCHEMA)


def test_evaluate_workdir_writes_metrics_pictures_and_table(tmp_path, capsys):
  size = 64
  data_dir, workdir = tmp_path / "data", tmp_path / "workdir"
  data_dir.mkdir()
  workdir.mkdir()
  faces = export.sample_faces(size)
  write_tiny_dataset(str(data_dir), faces)
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(10, activation="sigmoid")(x)
  keras.Model(inputs, keras.layers.Reshape((5, 2))(x)).save(workdir / "model.keras")
  (workdir / "config.json").write_text(json.dumps(
      {"data_dir": str(data_dir), "image_size": size, "huber_delta": 1.0}))
  (workdir / "history.csv").write_text(
      "epoch,loss,mae_px,val_loss,val_mae_px\n0,0.01,5.0,0.02,6.0\n1,0.005,3.0,0.01,4.0\n")

  metrics = evaluate.evaluate_workdir(str(workdir), tta_flip=True)

  assert json.loads((workdir / "metrics.json").read_text()) == metrics
  assert metrics["num_faces"] == len(faces) and metrics["image_size"] == size
  for protocol in ("aligned", "perturbed"):
    results = metrics[protocol]
    assert set(results) >= {"model", "model_flip_tta", "mean_shape", "teacher_floor",
                            "gap_closed_mae_px", "gap_closed_nme"}
    for key in ("mae", "mae_px", "huber", "nme", "failure_rate_0.10", "failure_rate_0.05",
                "auc_0.10", "per_keypoint_mae_px"):
      assert key in results["model"], key
  floor = metrics["aligned"]["teacher_floor"]
  assert floor is not None and floor["num_faces"] + floor["num_left_out"] == len(faces)
  # The perturbed faces are warped: their labels moved with them.
  assert metrics["perturbed"]["mean_shape"]["mae_px"] > metrics["aligned"]["mean_shape"]["mae_px"]
  for name in ("test_faces", "test_faces_perturbed", "worst_faces", "ced", "training_curves"):
    assert (workdir / "pictures" / f"{name}.png").exists(), name
  assert _png_size(workdir / "pictures" / "training_curves.png") == (900, 350)
  table = capsys.readouterr().out
  assert "mean-shape baseline" in table and "teacher floor" in table
