"""The callbacks of a training run that are not about its state on disk (that is
facekp.train.checkpointing's): progress lines, a stop at the first non-finite loss, the frozen
backbone, TensorBoard pictures.
"""
import math
import sys
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from facekp.core import drawing
from facekp.core import keypoints as keypoints_lib
from facekp.core import log_format
from facekp.models import keypoint_model



class StopOnNonFiniteLoss(keras.callbacks.Callback):
  """Raises at the first non-finite loss, before any checkpoint of that step is written."""

  def __init__(self):
    super().__init__()
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      raise FloatingPointError(
          f"loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; training "
          "stopped. The last good checkpoints (checkpoints/backup, checkpoints/best.weights.h5) "
          "are kept; lower --config.learning_rate (or use --config.precision=float32) and run "
          "again: the run resumes from the backup.")


def set_backbone_trainable(net, config, trainable):
  """Freezes or unfreezes the backbone; with bn_mode "frozen" its BatchNorms stay frozen."""
  keypoint_model.backbone_of(net).trainable = trainable
  if config.bn_mode == "frozen":
    keypoint_model.freeze_batch_norm(net)


class FreezeBackbone(keras.callbacks.Callback):
  """Keeps the backbone frozen (BatchNorm in inference mode) for the first N epochs."""

  def __init__(self, net, config):
    super().__init__()
    self.net = net
    self.config = config

  def on_epoch_begin(self, epoch, logs=None):
    trainable = epoch >= self.config.freeze_backbone_epochs
    if keypoint_model.backbone_of(self.net).trainable != trainable:
      set_backbone_trainable(self.net, self.config, trainable)
      self.model.make_train_function(force=True)
      logging.info("epoch %d: backbone %s", epoch + 1, "trainable" if trainable else "frozen")


def _clock(seconds):
  return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))


class Progress(keras.callbacks.Callback):
  """Progress inside each epoch and a line per epoch, with images/s and the time left.

  On a terminal one status line is redrawn in place; otherwise (a log file, a pipe) a compact
  line every `quiet_seconds`, or every `log_every_steps` steps when that is set. Puts the
  learning rate into the epoch's logs (history.csv, TensorBoard).
  """

  def __init__(self, num_epochs, steps_per_epoch, global_batch, log_every_steps, first_batch=0,
               stream=None, quiet_seconds=60.0):
    super().__init__()
    self.num_epochs = num_epochs
    self.steps_per_epoch = steps_per_epoch
    self.global_batch = global_batch
    self.log_every_steps = log_every_steps
    self.first_batch = first_batch
    self.stream = sys.stdout if stream is None else stream
    self.interactive = self.stream.isatty()
    self.every = 0.5 if self.interactive else quiet_seconds
    self.epoch_seconds = []

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch
    self.start = self.shown = time.time()
    self.offset = self.first_batch if not self.epoch_seconds else 0

  def _left(self, done, seconds):
    """(seconds left in this epoch, in the run), from the rate so far."""
    per_step = seconds / max(1, done - self.offset)
    epoch_left = (self.steps_per_epoch - done) * per_step
    per_epoch = (sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds
                 else self.steps_per_epoch * per_step)
    return epoch_left, epoch_left + (self.num_epochs - self.epoch - 1) * per_epoch

  def on_train_batch_end(self, batch, logs=None):
    now, done = time.time(), self.offset + batch + 1
    if self.log_every_steps:
      if done % self.log_every_steps:
        return
    elif now - self.shown < self.every or done == self.steps_per_epoch:
      return
    self.shown = now
    seconds = now - self.start
    epoch_left, run_left = self._left(done, seconds)
    line = (f"epoch {self.epoch + 1}/{self.num_epochs} step {done}/{self.steps_per_epoch}: "
            f"loss {logs['loss']:.5f}, MAE {logs['mae_px']:.2f} px, "
            f"{(done - self.offset) * self.global_batch / seconds:.1f} images/s, "
            f"epoch {_clock(epoch_left)} left, run at most {_clock(run_left)}")
    if self.interactive and not self.log_every_steps:
      self.stream.write("\r" + log_format.line(line)[:150].ljust(150))  # facekp train: ...
      self.stream.flush()
    else:
      logging.info("%s", line)

  def on_epoch_end(self, epoch, logs=None):
    if self.interactive:
      self.stream.write("\r" + " " * 150 + "\r")
      self.stream.flush()
    seconds = time.time() - self.start
    self.epoch_seconds.append(seconds)
    logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
    left = (self.num_epochs - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
    logging.info(
        "epoch %d/%d: loss %.5f, MAE %.2f px | val_loss %.5f, val MAE %.2f px | lr %.2g | "
        "%.1f images/s, %.1f s, at most %s left", epoch + 1, self.num_epochs, logs["loss"],
        logs["mae_px"], logs["val_loss"], logs["val_mae_px"], logs["learning_rate"],
        (self.steps_per_epoch - self.offset) * self.global_batch / seconds, seconds,
        _clock(left))


class ValidationPictures(keras.callbacks.Callback):
  """Logs the same validation faces to TensorBoard every epoch, with predicted and labelled
  points (by the model as validation sees it): the face grid of the evaluation pictures
  (facekp.core.drawing)."""

  def __init__(self, images, labels, names, logdir):
    super().__init__()
    self.images = np.asarray(images)
    self.labels = np.asarray(labels)
    self.names = tuple(names)
    self.writer = tf.summary.create_file_writer(logdir)

  def on_epoch_end(self, epoch, logs=None):
    predictions = keras.ops.convert_to_numpy(self.model(self.images, training=False))
    side = self.images.shape[1]
    fig, _ = drawing.face_grid_figure(
        self.images, keypoints_lib.to_pixels(self.labels, side),
        keypoints_lib.to_pixels(predictions, side), self.names,
        title=f"validation faces after epoch {epoch + 1}")
    grid = tf.io.decode_png(drawing.figure_png(fig), channels=3)
    with self.writer.as_default():
      tf.summary.image("validation faces (green: label, red: prediction)", grid[None],
                       step=epoch + 1)
    self.writer.flush()

  def on_train_end(self, logs=None):
    self.writer.close()
