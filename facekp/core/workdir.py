"""The layout of a training workdir, and the one place that reads it.

  config.json                the resolved config the run was started with
  config_source.json         the config file it was made from and the command's working
                             directory (the model card rebuilds the training command from them)
  train_mean_keypoints.json  the training split's mean face (normalised [K, 2]), recorded at
                             training time so a model can be scored on any other dataset
  dataset.json               the dataset the run started on (facekp.core.dataset_info.fingerprint:
                             split sizes, a digest of the shards): a resume on another is refused
  checkpoints/               best.weights.h5 and backup/ (the latest state, for resuming)
  history.csv                one row per epoch
  tensorboard/               TensorBoard logs
  model.keras                the inference model with the best weights
  eval/<name>/               metrics.json and pictures/ of each evaluation (facekp.eval.evaluate)
  export/                    SavedModel, TFLite and export_report.json (facekp.serve.export)
"""
import csv
import os

import numpy as np
import tensorflow as tf

from facekp.core import files

CONFIG = "config.json"
CONFIG_SOURCE = "config_source.json"
TRAIN_MEAN = "train_mean_keypoints.json"
DATASET = "dataset.json"
CHECKPOINTS = "checkpoints"
HISTORY = "history.csv"
TENSORBOARD = "tensorboard"
MODEL = "model.keras"
EXPORT = "export"
EVAL = "eval"
# What a run writes, config.json last: a deletion cut short leaves a workdir that is still known
# as one, and --restart again finishes the job. metrics.json and pictures/ are older layouts'.
RUN_FILES = (TRAIN_MEAN, DATASET, CHECKPOINTS, HISTORY, TENSORBOARD, MODEL, EVAL, EXPORT,
             "workers", "metrics.json", "pictures", CONFIG_SOURCE, CONFIG)


def path(workdir, name):
  return f"{str(workdir).rstrip('/')}/{name}"


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# The fields of config.json that stages other than training read: (test, what each must be).
_READ_FIELDS = {
    "data_dir": (lambda v: isinstance(v, str), "a folder name"),
    "image_size": (lambda v: _is_number(v) and v == int(v) >= 1, "an integer of 1 or more"),
    "huber_delta": (lambda v: _is_number(v) and v > 0, "a number above 0"),
}


def read_config(workdir, required=()):
  """The config.json of a workdir as a dict; a clear error when it is not a workdir, or when
  the fields other stages read (data_dir, image_size, huber_delta) are missing (those in
  `required`) or of the wrong kind."""
  if tf.io.gfile.exists(str(workdir)) and not tf.io.gfile.isdir(str(workdir)):
    raise NotADirectoryError(f"{workdir} is a file, not a facekp workdir (a folder holding "
                             f"{CONFIG} and {MODEL})")
  if not tf.io.gfile.exists(path(workdir, CONFIG)):
    raise FileNotFoundError(f"{workdir} is not a facekp workdir: {CONFIG} is missing (train "
                            "one with python -m facekp.main --config=... --workdir=...)")
  config_path = path(workdir, CONFIG)
  config = files.read_json(config_path, "config", expect=dict)
  for name, (test, what) in _READ_FIELDS.items():
    if name not in config:
      if name in required:
        raise files.damaged(config_path, f"the field {name} is missing")
      continue
    if not test(config[name]):
      raise files.damaged(config_path, f"{name}={config[name]!r} must be {what}")
  return config


def remove_run(workdir):
  """Deletes what a run wrote into `workdir` (RUN_FILES, nothing else); returns what it found."""
  found = [name for name in RUN_FILES if tf.io.gfile.exists(path(workdir, name))]
  for name in found:
    if tf.io.gfile.isdir(path(workdir, name)):
      tf.io.gfile.rmtree(path(workdir, name))
    else:
      tf.io.gfile.remove(path(workdir, name))
  return found


def write_config(workdir, config):
  tf.io.gfile.makedirs(str(workdir))
  files.atomic_write(path(workdir, CONFIG),
                     config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def write_config_source(workdir, config_file):
  """Records the config file a run was made from (None: a config built in code) and where the
  command ran, since relative paths in it and in config.json are relative to that folder."""
  files.write_json(path(workdir, CONFIG_SOURCE), {
      "config_file": None if config_file is None else str(config_file), "cwd": os.getcwd()})


def read_config_source(workdir):
  """The config_source.json of a workdir as a dict, or None for a run that did not record one."""
  source_path = path(workdir, CONFIG_SOURCE)
  if not tf.io.gfile.exists(source_path):
    return None
  source = files.read_json(source_path, "config source", expect=dict)
  for name in ("config_file", "cwd"):
    if source.get(name) is not None and not isinstance(source[name], str):
      raise files.damaged(source_path, f"{name} must be a path or null, not "
                                       f"{files.json_type(source[name])}")
  return source


def write_train_mean(workdir, mean_keypoints, data_dir, num_examples):
  files.write_json(path(workdir, TRAIN_MEAN), {
      "mean_keypoints": np.asarray(mean_keypoints, np.float64).tolist(),
      "data_dir": str(data_dir), "num_examples": int(num_examples)})


def write_dataset(workdir, data_dir, fingerprint):
  files.write_json(path(workdir, DATASET), {"data_dir": str(data_dir), **fingerprint})


def read_dataset(workdir):
  """The dataset record of a run (write_dataset), or None for a workdir without one."""
  record_path = path(workdir, DATASET)
  if not tf.io.gfile.exists(record_path):
    return None
  record = files.read_json(record_path, "dataset record", expect=dict)
  splits = record.get("splits")
  if (not isinstance(splits, dict) or not all(isinstance(n, int) for n in splits.values())
      or not isinstance(record.get("shards_sha256"), str)):
    raise files.damaged(record_path, 'it must hold "splits" ({split: number of examples}) and '
                                     '"shards_sha256" (a string)')
  return record


def read_train_mean(workdir):
  """The recorded training mean face float32 [K, 2], or None for a workdir without one."""
  mean_path = path(workdir, TRAIN_MEAN)
  if not tf.io.gfile.exists(mean_path):
    return None
  record = files.read_json(mean_path, "training mean", expect=dict)
  if "mean_keypoints" not in record:
    raise files.damaged(mean_path, "the field mean_keypoints is missing")
  try:
    mean = np.asarray(record["mean_keypoints"], np.float32)
  except (TypeError, ValueError):  # ragged lists, text
    mean = np.zeros((0,))
  if mean.ndim != 2 or mean.shape[1] != 2 or not mean.size or not np.isfinite(mean).all():
    raise files.damaged(mean_path, "mean_keypoints must be a list of [x, y] pairs of finite "
                        "numbers")
  return mean


HISTORY_EPOCH = "epoch"  # history.csv's first column, counting from 1 like the logs


def read_history(history_path):
  """The rows of history.csv (dicts of strings: the epoch an integer, each metric a number or
  blank), [] without one; a clear error naming the file and line when it holds anything else."""
  if not tf.io.gfile.exists(history_path):
    return []
  try:
    with tf.io.gfile.GFile(history_path) as f:
      rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise files.damaged(history_path, f"not a CSV file ({e})") from None
  for line, row in enumerate(rows, start=2):
    if None in row or None in row.values():
      raise files.damaged(history_path, f"line {line} does not have a value for each column")
    for column, value in row.items():
      try:
        int(value) if column == HISTORY_EPOCH else float(value or "nan")
      except ValueError:
        raise files.damaged(history_path, f"line {line}, column {column}: {value!r} is not "
                            f"{'an integer' if column == HISTORY_EPOCH else 'a number'}") from None
  return rows
