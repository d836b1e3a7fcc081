"""Resumable training state: backups, the best weights, history.csv, early stopping's count.

checkpoints/backup/ holds the latest state (weights with the optimizer's slots and step count,
and training_metadata.json: epochs finished, steps of the next epoch done) and the one before
it (previous.*). A backup is written to a temporary file first; the previous pair is kept
until the new pair is complete, so a kill at any moment leaves at least one complete pair.
A rerun resumes from the newest complete pair at the step where it was taken.

Every file goes through facekp.core.files; a full disk stops the run with a message that names the
disk and the last good state.
"""
import csv
import dataclasses
import io
import math
import posixpath

from absl import logging
import h5py
import keras
import tensorflow as tf

from facekp.core import files
from facekp.core import workdir as workdir_lib
from facekp.train import keras_internals

LATEST = ("latest.weights.h5", "training_metadata.json")
PREVIOUS = ("previous.weights.h5", "previous_metadata.json")


@dataclasses.dataclass(frozen=True)
class State:
  """Where training stands: `epoch` epochs finished and `batch` steps of the next one done."""
  epoch: int = 0
  batch: int = 0
  step: int = 0

  def describe(self):
    if not self.epoch and not self.batch:
      return "no backup yet"
    return f"epoch {self.epoch + 1} step {self.batch}" if self.batch else (
        f"the end of epoch {self.epoch}")


def backup_dir(folder):
  """Where a run in `folder` keeps its latest state."""
  return f"{workdir_lib.path(folder, workdir_lib.CHECKPOINTS)}/backup"


def best_weights_path(folder):
  """Where a run in `folder` keeps the weights of its best epoch (lowest config.monitor)."""
  return f"{workdir_lib.path(folder, workdir_lib.CHECKPOINTS)}/best.weights.h5"


def _pair(backup_dir, names=LATEST):
  return tuple(f"{backup_dir}/{name}" for name in names)


def _complete_state(weights, metadata):
  """The State of a backup pair, or why it cannot be used."""
  if not tf.io.gfile.exists(weights) or not tf.io.gfile.exists(metadata):
    return None, "incomplete"
  try:
    record = files.read_json(metadata, "backup metadata")
    size = tf.io.gfile.stat(weights).length
    if record.get("weights_bytes") not in (None, size):
      return None, f"{weights} holds {size} bytes, {metadata} says {record['weights_bytes']}"
    with h5py.File(weights, "r"):
      pass
    return State(int(record["epoch"]), int(record.get("batch", 0)),
                 int(record.get("step", 0))), None
  except (OSError, ValueError, KeyError, TypeError) as e:
    return None, str(e).splitlines()[0]


def restore(trainer, backup_dir):
  """Loads the newest complete backup into `trainer` (built, with its optimizer); its State.

  A damaged latest backup (a killed write, a truncated file) falls back to the previous one;
  with none usable the run starts from the beginning, and says so.
  """
  found = False
  for names in (LATEST, PREVIOUS):
    weights, metadata = _pair(backup_dir, names)
    found = found or tf.io.gfile.exists(weights) or tf.io.gfile.exists(metadata)
    state, problem = _complete_state(weights, metadata)
    if state is None:
      if problem != "incomplete":
        logging.warning("backup %s cannot be used (%s); trying an older one", weights, problem)
      continue
    trainer.load_weights(weights)
    return state
  if found:
    logging.warning("no complete backup in %s: training starts again from epoch 1", backup_dir)
  return State()


def write_weights(model, path, what, last_good):
  """The weights of `model` into `path` (atomically, as save_weights writes them); a full disk
  raises facekp.core.files.DiskFullError."""
  data = keras_internals.weights_h5_bytes(model)
  tf.io.gfile.makedirs(posixpath.dirname(path))
  try:
    files.atomic_write(path, data)
  except (OSError, tf.errors.OpError) as e:
    if not files.is_disk_full(e):
      raise
    raise files.DiskFullError(
        f"no space left on the disk of {path} while writing the {what} "
        f"({len(data) / 2**20:.1f} MB); training stopped. The last good state is kept "
        f"({last_good()}): free some space and run the same command again to resume "
        "from it") from None


class Backup(keras.callbacks.Callback):
  """Saves the training state every `every_steps` steps and at each epoch end.

  Never overwrites the last good backup with non-finite weights. `start` is where this fit
  begins (a resumed run starts inside an epoch); `best_path` is only named in messages.
  """

  def __init__(self, backup_dir, every_steps, steps_per_epoch, start, best_path):
    super().__init__()
    self.backup_dir, self.best_path = backup_dir, best_path
    self.every_steps, self.steps_per_epoch = every_steps, steps_per_epoch
    self.start = self.saved = start
    self.epoch, self.offset = start.epoch, start.batch

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch
    self.offset = self.start.batch if epoch == self.start.epoch else 0

  def on_train_batch_end(self, batch, logs=None):
    done = self.offset + batch + 1
    if self.every_steps and done % self.every_steps == 0 and done < self.steps_per_epoch:
      self.save(State(self.epoch, done, self._step()))

  def on_epoch_end(self, epoch, logs=None):
    self.save(State(epoch + 1, 0, self._step()))

  def _step(self):
    return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

  def last_good(self):
    return (f"backup of {self.saved.describe()} in {self.backup_dir}, best weights in "
            f"{self.best_path}")

  def save(self, state):
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_weights):
      raise FloatingPointError(
          "weights became NaN or inf; training stopped. The last good state is kept "
          f"({self.last_good()}); lower --config.learning_rate (or use "
          "--config.precision=float32) and run again.")
    weights, metadata = _pair(self.backup_dir)
    tmp = files.temporary_name(weights)
    write_weights(self.model, tmp, "backup", self.last_good)
    if _complete_state(weights, metadata)[0] is not None:
      old_weights, old_metadata = _pair(self.backup_dir, PREVIOUS)
      tf.io.gfile.rename(weights, old_weights, overwrite=True)
      tf.io.gfile.rename(metadata, old_metadata, overwrite=True)
    files.commit(tmp, weights)
    files.write_json(metadata, {
        "epoch": state.epoch, "batch": state.batch, "step": state.step,
        "weights_bytes": tf.io.gfile.stat(weights).length})
    self.saved = state


class BestCheckpoint(keras.callbacks.Callback):
  """Saves the weights whenever `monitor` (lower is better) improves on `best`."""

  def __init__(self, path, monitor, best, last_good):
    super().__init__()
    self.path = path
    self.monitor = monitor
    self.best = best
    self.last_good = last_good

  def on_epoch_end(self, epoch, logs=None):
    value = float(logs[self.monitor])
    if math.isfinite(value) and (self.best is None or value < self.best):
      write_weights(self.model, self.path, "best weights", self.last_good)
      self.best = value


def write_history(path, rows):
  """Rewrites history.csv with `rows` (atomically; columns: epoch, then the metrics)."""
  epoch = workdir_lib.HISTORY_EPOCH
  fields = [epoch] + sorted({k for row in rows for k in row} - {epoch})
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields, restval="")
  writer.writeheader()
  writer.writerows(rows)
  files.atomic_write(path, out.getvalue())


def history_logger(path, rows):
  """A callback that appends a row per epoch to `rows` and rewrites history.csv (epochs from 1)."""
  def log_epoch(epoch, logs):
    rows.append({workdir_lib.HISTORY_EPOCH: epoch + 1, **{k: float(v) for k, v in logs.items()}})
    write_history(path, rows)
  return keras.callbacks.LambdaCallback(on_epoch_end=log_epoch)


def early_stopping_state(values, patience):
  """(best, best_epoch, wait, stopped) after epochs scoring `values` (lower is better), as
  keras' EarlyStopping counts them; best_epoch counts from 0."""
  best, best_epoch, wait, stopped = None, 0, 0, False
  for epoch, value in enumerate(values):
    wait += 1
    if best is None or value < best:
      best, best_epoch, wait = value, epoch, 0
    elif patience and wait >= patience and epoch > 0:
      stopped = True
  return best, best_epoch, wait, stopped


def monitored(rows, monitor):
  """The monitored metric of each history row."""
  missing = [row[workdir_lib.HISTORY_EPOCH] for row in rows if row.get(monitor) in (None, "")]
  if missing:
    raise ValueError(f"history.csv has no {monitor} for epochs {missing}: this workdir was "
                     "trained with another monitor; use a new --workdir")
  return [float(row[monitor]) for row in rows]


@dataclasses.dataclass
class ResumePoint:
  """Where a run resumes, and every rule about it: the State restored from the newest complete
  backup and the history rows of the epochs it holds (rows written after it, by a run killed
  before its next backup, are run again). `rows` grows as epochs finish (history_logger)."""
  state: State
  rows: list

  @classmethod
  def restore(cls, trainer, workdir):
    """Loads the newest complete backup of `workdir` into `trainer`; the point it holds."""
    state = restore(trainer, backup_dir(workdir))
    rows = [row for row in workdir_lib.read_history(workdir_lib.path(workdir, workdir_lib.HISTORY))
            if int(row[workdir_lib.HISTORY_EPOCH]) <= state.epoch]
    return cls(state, rows)

  def monitored(self, monitor):
    return monitored(self.rows, monitor)

  def best(self, monitor):
    """(lowest `monitor` so far or None, its epoch counted from 1)."""
    best, best_epoch, _, _ = early_stopping_state(self.monitored(monitor), 0)
    return best, best_epoch + 1

  def finished(self, config):
    """All epochs run, or early stopping's patience used up."""
    if self.state.epoch >= config.num_epochs:
      return True
    return early_stopping_state(self.monitored(config.monitor),
                                config.early_stopping_patience)[3]


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
  """EarlyStopping (lower `monitor` is better) that continues the count of earlier epochs."""

  def __init__(self, past_values, patience, monitor):
    super().__init__(monitor=monitor, mode="min", patience=patience)
    self.past_values = list(past_values)

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    self.best, self.best_epoch, self.wait, _ = early_stopping_state(
        self.past_values, self.patience)
