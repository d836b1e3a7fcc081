"""Trains a keypoint model: facekp-train (python -m facekp.main) --config=NAME_OR_PATH --workdir=DIR
    [--config.data_dir=DATASET] [--config.FIELD=VALUE ...]

--config names a packaged config (tiny, few_faces, ...: facekp/configs) or the path of a config
file (one of your own: `from facekp.configs import default`, then change a few fields).

The stages, in order (facekp.api.run_training, which facekp.train_model runs too): check the
config (and that a rerun resumes with the config it started with), train (facekp.train.loop),
then, with config.evaluate_at_end, evaluate the best weights on the test split
(facekp.eval.evaluate, imported only then: training itself loads neither the teacher nor the
plotting stack). Running the same command again resumes an interrupted run; a changed config
is refused (a new --workdir, or --restart, starts afresh). --print_config lists every config
field with its value and comment. Under several workers (TF_CONFIG) only the chief deletes a run
(--restart) and evaluates.
"""
from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
import sys  # pylint: disable=wrong-import-order

from absl import app
from absl import flags
from ml_collections import config_flags

from facekp import api
from facekp.train import config_docs

FLAGS = flags.FLAGS

cli.define_workdir("Directory for checkpoints, logs and the trained model.", required=False)
config_flags.DEFINE_config_file("config", None, "Training config: a packaged one by name (tiny, "
                                "few_faces, ...: facekp/configs) or a config file's path; "
                                "--print_config lists its fields.", lock_config=True)
flags.DEFINE_bool("print_config", False, "Print every config field with its value and its "
                  "comment from facekp/train/default_config.py, then exit.")
flags.DEFINE_bool("restart", False, "Delete the run already in --workdir (checkpoints, history, "
                  "model, evaluations) and train anew: needed to change its config.")
flags.mark_flags_as_required(["config"])


def main(argv):
  config = FLAGS.config
  if FLAGS.print_config:
    print(config_docs.listing(config))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: the directory for this run's checkpoints, "
                         "logs and model (a new one starts a new run)")
  api.run_training(config, workdir=FLAGS.workdir, restart=FLAGS.restart,
                   config_file=cli.config_file(cli.config_module_path(sys.argv[1:])))


def run():
  """The facekp-train command (python -m facekp.main)."""
  cli.run(main)


if __name__ == "__main__":
  run()
