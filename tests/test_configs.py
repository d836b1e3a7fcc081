"""Every config file loads, uses only known augmentation fields, and builds its model."""
import glob
import importlib
import os

import pytest

from facekp.core import cli
from facekp.input import augment
from facekp.models import keypoint_model
from facekp.train import config_docs
from facekp.train import config_rules
from facekp.train import resume_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/facekp/configs/*.py")
               if not p.endswith("__init__.py"))


def test_the_seed_experiments_and_tiny_are_there():
  assert {"default", "mobilenet", "mobilenet_aug", "effnet_aug", "tiny"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_builds_its_model(name):
  config = importlib.import_module(f"facekp.configs.{name}").get_config()
  assert set(config.augment) == set(augment.make_config())
  assert config.batch_size > 0 and config.num_epochs > 0 and config.image_size > 0
  config.weights = "none"
  model = keypoint_model.create_model(config, num_keypoints=5)
  assert model.output.shape[1:] == (5, 2)
  assert model.input.shape[1:] == (config.image_size, config.image_size, 3)


def test_seed_defaults():
  config = importlib.import_module("facekp.configs.default").get_config()
  assert (config.image_size, config.batch_size, config.num_epochs) == (128, 32, 50)
  assert (config.learning_rate, config.loss, config.early_stopping_patience) == (1e-3, "huber", 2)
  assert (config.backbone, config.weights, config.head) == ("mobilenet_v2", "imagenet", "dense")
  assert not any(config.augment.values())


# facekp.train.config_rules: the whole config checked before any file is read.

from facekp.core import workdir as workdir_lib  # pylint: disable=wrong-import-position


def tiny(**overrides):
  config = importlib.import_module("facekp.configs.tiny").get_config()
  config.data_dir = "/no/such/dataset"  # validation must not look at it
  config.update(overrides)
  return config


def problems_of(config):
  with pytest.raises(config_rules.ConfigError) as error:
    config_rules.validate(config)
  return str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_every_config_file_validates(name):
  config = importlib.import_module(f"facekp.configs.{name}").get_config()
  config.data_dir = "/no/such/dataset"
  config_rules.validate(config)


@pytest.mark.parametrize("field", ["strategy", "precision", "bn_mode", "head", "loss",
                                   "optimizer", "lr_scaling", "lr_schedule"])
def test_a_bad_choice_names_the_field_and_the_choices(field):
  message = problems_of(tiny(**{field: "nope"}))
  assert f"{field}='nope': choose one of {', '.join(config_rules.ENUMS[field])}" in message
  assert "/no/such/dataset" not in message  # found before the dataset is looked at


def test_a_bad_backbone_lists_the_known_ones():
  message = problems_of(tiny(backbone="mobilenet_v9"))
  assert "backbone='mobilenet_v9'" in message and "mobilenetv2" in message


@pytest.mark.parametrize("field, value, expected", [
    ("learning_rate", -1.0, "learning_rate=-1.0: must be above 0"),
    ("learning_rate", 0.0, "learning_rate=0.0: must be above 0"),
    ("num_epochs", 0, "num_epochs=0: must be at least 1"),
    ("batch_size", 0, "batch_size=0: must be at least 1"),
    ("steps_per_epoch", -1, "steps_per_epoch=-1: must be None (one pass) or at least 1"),
    ("dropout", 1.0, "dropout=1.0: must be in [0, 1)"),
    ("huber_delta", 0.0, "huber_delta=0.0: must be above 0"),
    ("early_stopping_patience", -1, "early_stopping_patience=-1: must be 0 (off) or more"),
    ("image_size", 0, "image_size=0: must be from 1 to 4096"),
    ("image_size", 8192, "image_size=8192: must be from 1 to 4096"),
    ("learning_rate", float("inf"), "learning_rate=inf: must be a finite number"),
    ("huber_delta", float("nan"), "huber_delta=nan: must be a finite number"),
    ("heatmap_prior_sigma", 0.0, "heatmap_prior_sigma=0.0: must be above 0"),
    ("seed", -1, "seed=-1: must be from 0 to 2**31 - 1"),
    ("multi_worker_timeout_s", 0, "multi_worker_timeout_s=0: must be at least 1"),
    ("image_size", 100, "image_size=100: must be a multiple of feature_stride (32), e.g. 96"),
    ("warmup_epochs", 3.0, "warmup_epochs=3.0: must be below num_epochs (3)"),
    ("feature_stride", 12, "feature_stride=12: choose one of 4, 8, 16, 32"),
    ("weight_decay", -0.1, "weight_decay=-0.1: must be 0 or more"),
])
def test_each_range_is_checked(field, value, expected):
  assert expected in problems_of(tiny(**{field: value}))


def test_a_non_finite_value_is_named_once_and_augment_fields_are_checked_too():
  config = tiny(learning_rate=float("nan"))
  config.augment.rotation = float("inf")
  message = problems_of(config)
  assert "augment.rotation=inf: must be a finite number" in message
  assert message.count("learning_rate") == 1 and "must be above 0" not in message


def test_backbone_kwargs_the_backbone_does_not_take_are_named():
  config = tiny()
  config.backbone_kwargs = {"alpah": 0.35}
  assert "backbone_kwargs.alpah: mobilenet_v2 takes no such argument (it takes alpha" in (
      problems_of(config))


def test_every_problem_is_reported_at_once():
  message = problems_of(tiny(loss="hubr", learning_rate=-1.0, num_epochs=0))
  assert "loss='hubr'" in message and "learning_rate=-1.0" in message and "num_epochs=0" in message


def test_soft_argmax_needs_two_cells_and_augmentation_uses_augments_own_check():
  assert "soft_argmax head needs a feature map of 2x2" in problems_of(
      tiny(head="soft_argmax", image_size=32))
  config = tiny()
  config.augment.rotation = 500.0
  assert "augmentation rotation=500.0 is outside 0..180" in problems_of(config)


def test_unknown_fields_and_wrong_types_of_configs_not_made_from_default():
  import ml_collections  # pylint: disable=import-outside-toplevel
  loose = ml_collections.ConfigDict({**tiny().to_dict(), "image_size": "64", "lr": 0.1})
  message = problems_of(loose)
  assert "image_size='64': must be a int, not a str" in message
  assert "lr: no such config field (list every field with its comment: --print_config)" in message


def test_a_train_split_smaller_than_the_batch_is_refused():
  problem = config_rules.dataset_problem(tiny(batch_size=64), num_train=6)
  assert "batch_size=64 is larger than the train split" in problem
  assert "--config.batch_size=6 or less" in problem
  assert config_rules.dataset_problem(tiny(batch_size=4), num_train=6) is None


def test_resume_allows_only_changes_that_keep_the_model():
  saved = cli.config_as_dict(tiny())
  allowed, refused = resume_rules.resume_differences(
      saved, tiny(num_epochs=10, log_every_steps=5, evaluate_at_end=False))
  assert set(allowed) == {"num_epochs", "log_every_steps", "evaluate_at_end"} and not refused
  allowed, refused = resume_rules.resume_differences(
      saved, tiny(learning_rate=0.1, image_size=96, num_epochs=2))
  assert refused == {"learning_rate": (1e-3, 0.1), "image_size": (64, 96), "num_epochs": (3, 2)}
  cosine = cli.config_as_dict(tiny(lr_schedule="cosine"))
  assert "num_epochs" in resume_rules.resume_differences(
      cosine, tiny(lr_schedule="cosine", num_epochs=10))[1]  # the schedule would change


def test_the_workdir_refuses_another_config_until_restart(tmp_path):
  workdir = str(tmp_path / "run")
  workdir_lib.write_config(workdir, tiny())
  (tmp_path / "run" / "history.csv").write_text("epoch\n0\n")
  (tmp_path / "run" / "checkpoints").mkdir()
  (tmp_path / "run" / "notes.txt").write_text("the user's own file")
  resume_rules.check_workdir(workdir, tiny(num_epochs=5))  # raising num_epochs resumes
  with pytest.raises(config_rules.ConfigError) as error:
    resume_rules.check_workdir(workdir, tiny(learning_rate=0.1, image_size=96))
  assert ("holds a run started with another config: image_size 64 -> 96, learning_rate 0.001 -> "
          "0.1") in str(error.value)
  assert "new --workdir" in str(error.value) and "--restart" in str(error.value)
  resume_rules.check_workdir(workdir, tiny(learning_rate=0.1), restart=True)
  assert sorted(p.name for p in (tmp_path / "run").iterdir()
                if not p.name.startswith(".")) == ["notes.txt"]
  resume_rules.check_workdir(workdir, tiny(learning_rate=0.1))  # a fresh workdir: nothing to refuse


def test_the_listing_shows_each_field_with_its_comment():
  text = config_docs.listing(tiny())
  assert "image_size = 64\n" in text
  assert "loss = 'huber'  # \"huber\", \"mse\" or \"mae\"" in text
  assert "augment.flip = 0.0  # probability of a horizontal flip" in text
  assert "bn_mode = 'batch'  # \"batch\": BatchNorm on batch statistics" in text
  assert "Data: a directory" not in text  # section headings describe no field
