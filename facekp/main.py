"""Trains a keypoint model: python -m facekp.main --config=configs/X.py --workdir=DIR
    [--config.data_dir=DATASET] [--config.FIELD=VALUE ...]

The stages, in order: train (facekp.train), then, with config.evaluate_at_end, evaluate the
best weights on the test split (facekp.evaluate, imported only then: training itself loads
neither the teacher nor the plotting stack). Running the same command again resumes an
interrupted run. Under several workers (TF_CONFIG) only the chief evaluates.
"""
import difflib
import importlib.util
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from facekp import hardware
from facekp import train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the trained model.")
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _field_paths(config, prefix=""):
  for key, value in config.items():
    yield prefix + key
    if hasattr(value, "items"):
      yield from _field_paths(value, f"{prefix}{key}.")


def _load_config_file(argv):
  """The config that --config names, loaded the way config_flags does (path[:argument])."""
  spec = next(a.split("=", 1)[1] for a in argv if re.match(r"^--?config=", a))
  path, _, argument = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_facekp_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def _unknown_overrides(argv):
  """--config.FIELD arguments that name no field of the config, with the closest fields."""
  try:
    fields = list(_field_paths(_load_config_file(argv)))
  except Exception:  # the config file itself is broken: config_flags' own error says how
    return []
  unknown = []
  for arg in argv:
    match = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if match and match.group(1) not in fields:
      close = difflib.get_close_matches(match.group(1), fields, n=3, cutoff=0.6)
      unknown.append(f"--config.{match.group(1)}: no such config field"
                     + (f"; did you mean {', '.join(close)}?" if close else ""))
  return unknown


def parse_flags(argv):
  """absl's parsing, with a short message naming any unknown --config.FIELD (and the closest
  existing ones) in place of ml_collections' traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    unknown = _unknown_overrides(argv)
    if not unknown:
      raise
    sys.stderr.write("FATAL Flags parsing error: " + "\n".join(unknown) + "\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.config.data_dir:
    raise app.UsageError("config.data_dir is not set: pass --config.data_dir=DIR, a dataset "
                         "written by `python -m tools.make_tfrecords --images=... --out=DIR`")
  logging.info("config:\n%s", FLAGS.config)
  run(FLAGS.config, FLAGS.workdir)


def run(config, workdir):
  """Trains, then evaluates on the test split (the chief only); returns the metrics."""
  metrics = train.train_and_evaluate(config, workdir)
  if config.evaluate_at_end and hardware.is_chief():
    from facekp import evaluate  # pylint: disable=g-import-not-at-top  (MediaPipe, matplotlib)
    metrics["test"] = evaluate.evaluate_workdir(workdir)
  return metrics


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
