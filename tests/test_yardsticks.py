"""Tests for facekp.eval.yardsticks: the perturbed protocol on real pixels, the training mean's
sources (recorded, recomputed, neither)."""
import logging

import numpy as np
import pytest

from facekp.core import keypoints as keypoints_lib
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.core import workdir as workdir_lib
from facekp.eval import yardsticks

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))


def test_perturbed_protocol_is_fixed_and_moves_labels_with_the_faces():
  size = 64
  rng = np.random.default_rng(2)
  keypoints = rng.uniform(0.35, 0.65, (4, 5, 2)).astype(np.float32)
  images = np.zeros((4, size, size, 3), np.uint8)
  for image, (x, y) in zip(images, keypoints_lib.to_pixels(keypoints[:, 0], size)):
    image[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 255  # a blob at the nose tip
  warped, moved = yardsticks.perturb(images, keypoints, SCHEMA.flip_permutation)
  again = yardsticks.perturb(images, keypoints, SCHEMA.flip_permutation)
  np.testing.assert_array_equal(warped, again[0])
  np.testing.assert_array_equal(moved, again[1])
  assert np.abs(keypoints_lib.to_pixels(moved - keypoints, size)).mean() > 1.0  # faces moved
  for image, point in zip(warped, keypoints_lib.to_pixels(moved[:, 0], size)):
    weight = image[..., 0].astype(np.float64)
    rows, cols = np.mgrid[:size, :size] + 0.5
    centre = np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
    assert np.linalg.norm(centre - point) < 1.0, (centre, point)
  assert yardsticks.perturbation()["seed"] == yardsticks.PERTURBATION_SEED


def test_training_mean_is_the_recorded_one(tmp_path):
  mean = np.random.default_rng(0).uniform(0.2, 0.8, (5, 2))
  workdir_lib.write_train_mean(tmp_path, mean, "/nowhere", 10)
  found, source = yardsticks.training_mean(str(tmp_path), {"data_dir": "/nowhere"})
  np.testing.assert_allclose(found, mean, rtol=1e-6)
  assert source.endswith(workdir_lib.TRAIN_MEAN)


def test_training_mean_is_recomputed_from_the_config_dataset_and_says_so(
    tmp_path, labelled_dataset, caplog):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  faces = sample.sample_faces(32)[:3]
  labelled_dataset(str(data_dir), faces, splits=("train", "test"))
  with caplog.at_level(logging.WARNING):
    mean, source = yardsticks.training_mean(str(tmp_path), {"data_dir": str(data_dir)})
  assert source == f"{data_dir} train split"
  assert "recomputed" in caplog.text
  assert mean.shape == (5, 2) and np.abs(mean[0] - (0.5, 0.55)).max() < 0.03


def test_training_mean_without_a_record_or_a_train_split_is_a_clear_error(
    tmp_path, labelled_dataset):
  data_dir = tmp_path / "only_test"
  data_dir.mkdir()
  labelled_dataset(str(data_dir), sample.sample_faces(32)[:2], splits=("test",))
  with pytest.raises(ValueError, match="records no training mean.*has no split 'train'"):
    yardsticks.training_mean(str(tmp_path), {"data_dir": str(data_dir)})
  with pytest.raises(ValueError, match="records no training mean.*not a facekp dataset"):
    yardsticks.training_mean(str(tmp_path), {"data_dir": str(tmp_path / "missing")})
