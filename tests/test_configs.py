"""Every config file loads, uses only known augmentation fields, and builds its model."""
import glob
import importlib
import os

import pytest

from facekp import augment
from facekp import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/configs/*.py")
               if not p.endswith("__init__.py"))


def test_the_seed_experiments_and_tiny_are_there():
  assert {"default", "mobilenet", "mobilenet_aug", "effnet_aug", "tiny"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert set(config.augment) == set(augment.make_config())
  assert config.batch_size > 0 and config.num_epochs > 0 and config.image_size > 0
  config.weights = "none"
  model = models.create_model(config, num_keypoints=5)
  assert model.output.shape[1:] == (5, 2)
  assert model.input.shape[1:] == (config.image_size, config.image_size, 3)


def test_seed_defaults():
  config = importlib.import_module("configs.default").get_config()
  assert (config.image_size, config.batch_size, config.num_epochs) == (128, 32, 50)
  assert (config.learning_rate, config.loss, config.early_stopping_patience) == (1e-3, "huber", 2)
  assert (config.backbone, config.weights, config.head) == ("mobilenet_v2", "imagenet", "dense")
  assert not any(config.augment.values())
