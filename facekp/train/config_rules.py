"""The training config's contract: every choice in one place, the whole config checked before any
file is read.

The fields, their types and their comments are those of facekp.train.default_config; experiment
configs (facekp/configs/*.py) start from it and override a few values.
"""
import inspect
import math

from ml_collections import config_dict
import tensorflow as tf

from facekp.core import checks
from facekp.input import augment
from facekp.input import input_pipeline
from facekp.models import keypoint_model
from facekp.train import default_config as default_config_lib

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BN_MODES = ("batch", "frozen")
HEADS = keypoint_model.HEADS  # the heads keypoint_model.py builds
LOSSES = ("huber", "mse", "mae")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCALINGS = ("none", "linear")
LR_SCHEDULES = ("constant", "cosine")
CACHE_MODES = ("memory", "none")  # or the path of tf.data cache files
WEIGHTS = ("imagenet", "none")  # or the path of a no-top weights file
FEATURE_STRIDES = (4, 8, 16, 32)
MONITORED_METRICS = ("val_mae_px", "val_loss")
DEFAULT_MONITOR = "val_mae_px"
ENUMS = {
    "strategy": STRATEGIES, "precision": PRECISIONS, "bn_mode": BN_MODES, "head": HEADS,
    "loss": LOSSES, "optimizer": OPTIMIZERS, "lr_scaling": LR_SCALINGS,
    "lr_schedule": LR_SCHEDULES, "feature_stride": FEATURE_STRIDES, "monitor": MONITORED_METRICS,
}

PRINT_CONFIG_HINT = "list every field with its comment: --print_config"


class ConfigError(ValueError):
  """A config value outside its choices, type or range; the message names each field."""


def default_config():
  return default_config_lib.get_config()


# Validation.

def flatten(tree, prefix=""):
  """{"a.b": value} for every leaf of a nested ConfigDict or dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, (dict, config_dict.ConfigDict)) and key != "backbone_kwargs":
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def _declared_types(config):
  """{field: type} of a ConfigDict, placeholders (None) included."""
  types = {}
  for key in config.keys():
    value = config.get_ref(key).get()
    if isinstance(value, config_dict.ConfigDict) and key != "backbone_kwargs":
      types.update({f"{key}.{k}": t for k, t in _declared_types(value).items()})
    else:
      types[key] = config.get_ref(key).get_type()
  return types


def _type_problem(name, value, wanted):
  if value is None:
    return None if wanted in (int, float) and name in ("steps_per_epoch", "bn_momentum") else (
        f"{name}=None: give a {wanted.__name__}")
  if wanted is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return None
  if wanted in (dict, config_dict.ConfigDict) and isinstance(value, (dict, config_dict.ConfigDict)):
    return None
  if isinstance(value, wanted) and not (wanted is int and isinstance(value, bool)):
    return None
  return f"{name}={value!r}: must be a {wanted.__name__}, not a {type(value).__name__}"


def _field_problems(config):
  """Unknown fields and wrong types, against facekp/configs/default.py."""
  wanted, given = _declared_types(default_config()), flatten(config)
  problems = []
  for name in sorted(set(given) - set(wanted)):
    problems.append(f"{name}: no such config field ({PRINT_CONFIG_HINT})")
  missing = sorted(set(wanted) - set(given))
  if missing:
    problems.append(f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}: "
                    f"{len(missing)} field(s) missing (configs should start from "
                    "facekp.configs.default.get_config())")
  for name in sorted(set(given) & set(wanted)):
    problems.append(_type_problem(name, given[name], wanted[name]))
  return [p for p in problems if p]


def _enum_problems(config):
  problems = []
  for name, choices in ENUMS.items():
    value = config.get(name, DEFAULT_MONITOR if name == "monitor" else None)
    if value not in choices:
      problems.append(f"{name}={value!r}: choose one of {', '.join(map(str, choices))}")
  if config.backbone_kwargs is None:
    problems.append("backbone_kwargs=None: give a dict such as {} or {'alpha': 0.35}")
  try:
    constructor, _ = keypoint_model.application(config.backbone)
  except ValueError as e:
    problems.append(f"backbone={config.backbone!r}: {e}")
  else:
    problems += _backbone_kwargs_problems(config, constructor)
  return problems


def _backbone_kwargs_problems(config, constructor):
  """backbone_kwargs names the backbone's constructor does not take."""
  if not hasattr(config.backbone_kwargs, "keys"):
    return [f"backbone_kwargs={config.backbone_kwargs!r}: give a dict such as {{}} or "
            "{'alpha': 0.35}"]
  parameters = inspect.signature(constructor).parameters
  if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    return []
  taken = sorted(set(parameters) - {"include_top", "weights", "input_shape"})
  unknown = sorted(set(config.backbone_kwargs.keys()) - set(taken))
  return [f"backbone_kwargs.{name}: {config.backbone} takes no such argument (it takes "
          f"{', '.join(taken)})" for name in unknown]


RANGES = (
    # (field, test, what the value must be); every float field must also be finite
    ("image_size", lambda v: 1 <= v <= 4096, "from 1 to 4096"),
    ("shuffle_buffer", lambda v: v >= 1, "at least 1"),
    ("head_units", lambda v: v >= 1, "at least 1"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("output_scale", lambda v: v > 0, "above 0"),
    ("heatmap_prior_sigma", lambda v: v > 0, "above 0"),
    ("bn_momentum", lambda v: v is None or 0 <= v <= 1, "None or in [0, 1]"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("num_epochs", lambda v: v >= 1, "at least 1"),
    ("steps_per_epoch", lambda v: v is None or v >= 1, "None (one pass) or at least 1"),
    ("learning_rate", lambda v: v > 0, "above 0"),
    ("weight_decay", lambda v: v >= 0, "0 or more"),
    ("lr_base_batch_size", lambda v: v >= 1, "at least 1"),
    ("warmup_epochs", lambda v: v >= 0, "0 or more"),
    ("freeze_backbone_epochs", lambda v: v >= 0, "0 or more"),
    ("huber_delta", lambda v: v > 0, "above 0"),
    ("early_stopping_patience", lambda v: v >= 0, "0 (off) or more"),
    ("checkpoint_every_steps", lambda v: v >= 0, "0 or more"),
    ("log_every_steps", lambda v: v >= 0, "0 (per epoch only) or more"),
    ("multi_worker_timeout_s", lambda v: v >= 1, "at least 1"),
    ("seed", lambda v: 0 <= v < 2**31, "from 0 to 2**31 - 1"),
)


def _finite_problems(config):
  """The float fields (augment's too) holding inf or nan, which the range tests would read
  wrongly (inf is above 0; nan is neither above nor below anything)."""
  flat = flatten(config)
  return [f"{name}={flat[name]!r}: must be a finite number"
          for name, wanted in sorted(_declared_types(default_config()).items())
          if wanted is float and isinstance(flat.get(name), float)
          and not math.isfinite(flat[name])]


def _range_problems(config):
  problems = [f"{name}={config[name]!r}: must be {what}" for name, test, what in RANGES
              if not test(config[name])]
  if config.warmup_epochs >= config.num_epochs >= 1:
    problems.append(f"warmup_epochs={config.warmup_epochs}: must be below num_epochs "
                    f"({config.num_epochs})")
  stride = config.feature_stride
  if config.image_size >= 1 and stride in FEATURE_STRIDES:
    if config.image_size % stride:
      problems.append(f"image_size={config.image_size}: must be a multiple of feature_stride "
                      f"({stride}), e.g. {max(stride, config.image_size // stride * stride)}")
    elif config.head == "soft_argmax" and config.image_size < 2 * stride:
      problems.append(f"image_size={config.image_size}: the soft_argmax head needs a feature map "
                      f"of 2x2 or more, image_size {2 * stride} or more at feature_stride {stride}")
  if not config.cache:
    problems.append("cache='': choose memory, none or the path of tf.data cache files")
  if not config.data_dir:
    problems.append("config.data_dir is not set: pass --config.data_dir=DIR, a dataset written by "
                    "`facekp-make-tfrecords --images=... --out=DIR` (python -m "
                    "tools.make_tfrecords in a checkout)")
  return problems


def _augment_problems(config):
  try:
    augment.check_config(config.augment)
  except ValueError as e:
    return [str(e)]
  return []


def validate(config):
  """Checks every field of a training config: names, types, choices and ranges. Reads no file
  but the config modules; raises ConfigError naming each bad field."""
  problems = _field_problems(config)
  if not problems:  # the value checks below need every field, each of its type
    not_finite = _finite_problems(config)
    problems = _enum_problems(config) + not_finite
    if not not_finite:  # the ranges compare finite values
      problems += _range_problems(config) + _augment_problems(config)
  if problems:
    raise ConfigError("bad config: " + "; ".join(problems))


def check_dataset(config):
  """After validate(): refuses a dataset this config cannot train on (it reads its metadata),
  a weights file that is not there and a cache path that leads through a file."""
  if not tf.io.gfile.isdir(config.data_dir):
    raise FileNotFoundError(f"config.data_dir={config.data_dir}: no such directory (write one "
                            "with facekp-make-tfrecords --images=... --out=DIR)")
  if config.weights not in WEIGHTS + ("",):
    checks.input_file("config.weights", config.weights, "weights file (or imagenet, none)")
  if config.cache not in CACHE_MODES:
    checks.output_folder("config.cache", config.cache)
  problem = dataset_problem(config, input_pipeline.num_examples(config.data_dir, "train"))
  if problem:
    raise ConfigError(problem)


def dataset_problem(config, num_train):
  """Why `config` cannot train on a train split of num_train examples, or None. A global batch
  above the split would repeat examples within each batch."""
  if num_train == 0:
    return f"the train split of {config.data_dir} is empty"
  if config.batch_size > num_train:
    return (f"batch_size={config.batch_size} is larger than the train split of {config.data_dir} "
            f"({num_train} examples): each batch would repeat examples; pass "
            f"--config.batch_size={num_train} or less")
  return None


# Resuming.
