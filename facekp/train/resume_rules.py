"""Which config changes a resumed run accepts, the check made before training into a workdir,
and the check that a resumed run trains on the dataset it started on."""
import os

from absl import logging
import tensorflow as tf

from facekp.core import checks
from facekp.core import cli
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import workdir as workdir_lib
from facekp.train import config_rules

# Fields a resumed run may change: none of them changes the weights trained so far or the maths
# of the steps still to come.
#   num_epochs               raised only, and only under a constant schedule (cosine decays over
#                            num_epochs, so its learning rate at every step would change)
#   early_stopping_patience  decides only when training stops, not what an epoch computes
#   strategy, tpu, jit_compile   where and how the same steps run (the global batch is fixed), so
#                            an interrupted run can move to another machine
#   cache                    where decoded images are kept, not their values
#   log_every_steps, checkpoint_every_steps, evaluate_at_end, multi_worker_timeout_s
#                            bookkeeping
# Everything else (data, model, optimiser, augmentation, seed, precision, shuffle_buffer...)
# changes the model: such a run is a new run.
RESUMABLE = ("num_epochs", "early_stopping_patience", "strategy", "tpu", "jit_compile", "cache",
             "log_every_steps", "checkpoint_every_steps", "evaluate_at_end",
             "multi_worker_timeout_s")


def _same(name, old, new):
  if name == "data_dir" and old and new:
    return os.path.realpath(old) == os.path.realpath(new)
  return old == new


def resume_differences(saved, config):
  """(allowed, refused): {field: (old, new)} of the fields where `config` differs from the saved
  config.json dict, split into changes a resumed run accepts and changes that make a new model."""
  old, new = config_rules.flatten(saved), config_rules.flatten(cli.config_as_dict(config))
  changed = {name: (old.get(name), new.get(name)) for name in sorted(set(old) | set(new))
             if not _same(name, old.get(name), new.get(name))}
  allowed = {name: change for name, change in changed.items() if _resumable(name, change, new)}
  refused = {name: change for name, change in changed.items() if name not in allowed}
  return allowed, refused


def _resumable(name, change, new):
  if name not in RESUMABLE:
    return False
  if name == "num_epochs":
    old_epochs, new_epochs = change
    return (isinstance(old_epochs, int) and new_epochs > old_epochs
            and new["lr_schedule"] == "constant")
  return True


def describe_changes(changes):
  return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())


def check_workdir(workdir, config, restart=False):
  """Before training into `workdir` (a folder, or a path to create one): with restart, deletes
  the previous run there; else refuses to resume a run that was started with a config that
  makes another model."""
  checks.output_folder("workdir", workdir)
  if not tf.io.gfile.exists(workdir_lib.path(workdir, workdir_lib.CONFIG)):
    return
  if restart:
    with files.folder_lock(workdir, "--workdir"):
      removed = workdir_lib.remove_run(workdir)
    logging.warning("--restart: deleted the previous run in %s (%s)", workdir, ", ".join(removed))
    return
  allowed, refused = resume_differences(workdir_lib.read_config(workdir), config)
  if refused:
    raise config_rules.ConfigError(
        f"{workdir} holds a run started with another config: {describe_changes(refused)}. "
        "Resume it with the config it was started with, train into a new --workdir, or pass "
        "--restart to delete that run and start afresh")
  if allowed:
    logging.info("resuming %s with %s (changes that keep the model)", workdir,
                 describe_changes(allowed))


def check_dataset(workdir, data_dir):
  """The fingerprint of the dataset at data_dir (facekp.core.dataset_info.fingerprint), after
  refusing to resume a run in `workdir` that started on other data: a dataset rewritten in place
  (other splits, images or labels) would put faces the run trained on into validation and test.
  A workdir without a record (a new run) accepts any."""
  found = dataset_info.fingerprint(data_dir)
  recorded = workdir_lib.read_dataset(workdir)
  if recorded is None or {k: recorded.get(k) for k in found} == found:
    return found
  raise config_rules.ConfigError(
      f"{workdir} holds a run started on another version of the dataset {data_dir}: "
      f"{describe_dataset_change(recorded, found)}. Faces it trained on may now be in "
      "validation or test. Resume it on the dataset it started with, train into a new "
      "--workdir, or pass --restart to delete that run and start afresh")


def describe_dataset_change(recorded, found):
  sizes = lambda record: ", ".join(f"{k} {v}" for k, v in (record.get("splits") or {}).items())
  if recorded.get("splits") != found["splits"]:
    return f"its splits were {sizes(recorded)} examples and are {sizes(found)}"
  return f"its splits hold {sizes(found)} examples as before, but the shards' content changed"
