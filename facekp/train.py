"""Training: strategy, precision, the augmenting train step, fit with resumable callbacks.

Workdir layout:
  config.json      the resolved config
  checkpoints/     best.weights.h5 (lowest val_loss) and backup/ (latest state, for resuming)
  history.csv      one row per epoch (appended on resume)
  tensorboard/     TensorBoard logs
  model.keras      the inference model with the best weights
  metrics.json, pictures/   written by facekp.evaluate at the end (config.evaluate_at_end)

Run the same command again after any interruption: training continues from the latest backup
(saved every config.checkpoint_every_steps steps and at each epoch end), with the early-stopping
state rebuilt from history.csv, and ends at the same epoch count as an uninterrupted run.
"""
import contextlib
import csv
import io
import json
import math
import time
import warnings

from absl import logging
import keras
import tensorflow as tf

from facekp import augment
from facekp import dataset
from facekp import evaluate
from facekp import input_pipeline
from facekp import models

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BN_MODES = ("batch", "frozen")
BN_ESTIMATION_IMAGES = 256  # bn_mode "frozen": statistics of the first training images


# Hardware.

def create_strategy(name, tpu=""):
  """The tf.distribute strategy `name`; "mirrored" uses every local GPU, else every CPU device."""
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device"
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
  if name == "mirrored":
    if gpus:
      return tf.distribute.MirroredStrategy(gpus)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"strategy={name!r}: choose one of {STRATEGIES}")


def resolve_precision(precision, strategy):
  """"auto": mixed_float16 on GPUs, mixed_bfloat16 on TPUs and CPUs."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r}: choose one of {PRECISIONS}")
  if precision != "auto":
    return precision
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "mixed_bfloat16"
  return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def jit_compile_problem(jit_compile, num_replicas):
  """Why XLA cannot compile this setting here, or None."""
  if jit_compile and num_replicas > 1 and not tf.config.list_logical_devices("GPU"):
    return ("jit_compile=True with several replicas on (logical) CPU devices fails in "
            "TensorFlow 2.19: XLA compiles the step for one device and a replica's variables "
            "live on another (tensorflow.org/xla/known_issues). Use --config.jit_compile=False "
            "or one replica; on several GPUs it works.")
  return None


def _is_chief(strategy):
  resolver = getattr(strategy, "cluster_resolver", None)
  return resolver is None or not resolver.task_type or (
      resolver.task_type in ("chief", "worker") and resolver.task_id == 0
      and "chief" not in resolver.cluster_spec().as_dict())


def _writer_dir(workdir, strategy):
  """Non-chief workers of a multi-worker run write their (identical) state beside the chief's."""
  if _is_chief(strategy):
    return workdir
  resolver = strategy.cluster_resolver
  return f"{workdir}/workers/{resolver.task_type}_{resolver.task_id}"


# The model in training.

class KeypointTrainer(keras.Model):
  """Wraps the inference model; its train step augments each batch on the device first.

  The augmentation seed of each step is (config.seed, step * replicas + replica): stateless,
  different on every replica and step, and the same again when a run is resumed.
  """

  def __init__(self, net, augment_config, flip_permutation, seed, **kwargs):
    super().__init__(**kwargs)
    self.net = net
    self.augment_config = augment_config
    self.flip_permutation = tuple(flip_permutation)
    self.seed = int(seed)

  def call(self, images, training=None):
    return self.net(images, training=training)

  def train_step(self, data):
    images, keypoints = data
    if any(self.augment_config.values()):
      context = tf.distribute.get_replica_context()
      step = (tf.cast(self.optimizer.iterations, tf.int64) * context.num_replicas_in_sync
              + tf.cast(context.replica_id_in_sync_group, tf.int64))
      seed = tf.stack([tf.constant(self.seed, tf.int64), step])
      images, keypoints = augment.augment_batch(
          images, keypoints, self.augment_config, seed, self.flip_permutation)
    return super().train_step((images, keypoints))


def _loss(config):
  if config.loss == "huber":
    return keras.losses.Huber(delta=config.huber_delta)
  if config.loss in ("mse", "mae"):
    return config.loss
  raise ValueError(f"loss={config.loss!r}: choose huber, mse or mae")


def mae_px_metric(image_size):
  """Mean absolute error in pixels of the model's input (normalised MAE * image size)."""
  def mae_px(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2)) * image_size
  return keras.metrics.MeanMetricWrapper(mae_px, name="mae_px")


def learning_rate(config, num_replicas):
  """The base learning rate, scaled linearly with the global batch when config.lr_scaling says so."""
  if config.lr_scaling == "none":
    lr = config.learning_rate
  elif config.lr_scaling == "linear":
    lr = config.learning_rate * config.batch_size / config.lr_base_batch_size
  else:
    raise ValueError(f"lr_scaling={config.lr_scaling!r}: choose none or linear")
  logging.info("learning rate %.3g (%s scaling; global batch %d = %d replicas x %d)", lr,
               config.lr_scaling, config.batch_size, num_replicas, config.batch_size // num_replicas)
  return lr


def lr_schedule(config, base_lr, steps_per_epoch):
  """Constant or cosine decay over the whole run, either after a linear warm-up from 0."""
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.lr_schedule not in ("constant", "cosine"):
    raise ValueError(f"lr_schedule={config.lr_schedule!r}: choose constant or cosine")
  if config.lr_schedule == "constant" and not warmup:
    return base_lr
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup else base_lr,
      decay_steps=max(1, total - warmup),
      alpha=1.0 if config.lr_schedule == "constant" else 0.0,
      warmup_target=base_lr if warmup else None,
      warmup_steps=warmup)


def create_optimizer(config, lr):
  if config.optimizer == "adam":
    return keras.optimizers.Adam(lr)
  if config.optimizer == "adamw":
    return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
  raise ValueError(f"optimizer={config.optimizer!r}: choose adam, adamw or sgd")


def current_lr(optimizer):
  return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


# Resuming.

def _backup_epoch(backup_dir):
  """The epoch BackupAndRestore will resume at (its training_metadata.json), 0 without one."""
  path = f"{backup_dir}/training_metadata.json"
  if not tf.io.gfile.exists(path):
    return 0
  with tf.io.gfile.GFile(path) as f:
    return int(json.load(f)["epoch"])


def _history_up_to(history_path, epochs):
  """Rows of history.csv for epochs < `epochs`; later rows (written after the last backup by a
  run that was then killed) are dropped from the file, since those epochs run again."""
  if not tf.io.gfile.exists(history_path):
    return []
  with tf.io.gfile.GFile(history_path) as f:
    rows = list(csv.DictReader(f))
  kept = [row for row in rows if int(row["epoch"]) < epochs]
  if len(kept) != len(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(kept)
    with tf.io.gfile.GFile(history_path, "w") as f:
      f.write(out.getvalue())
  return kept


def early_stopping_state(val_losses, patience):
  """(best, best_epoch, wait, stopped) after these epochs, as keras' EarlyStopping counts them."""
  best, best_epoch, wait, stopped = None, 0, 0, False
  for epoch, value in enumerate(val_losses):
    wait += 1
    if best is None or value < best:
      best, best_epoch, wait = value, epoch, 0
    elif patience and wait >= patience and epoch > 0:
      stopped = True
  return best, best_epoch, wait, stopped


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
  """EarlyStopping on val_loss that continues the count of the epochs run before a restart."""

  def __init__(self, past_val_losses, patience):
    super().__init__(monitor="val_loss", mode="min", patience=patience)
    self.past_val_losses = list(past_val_losses)

  def on_train_begin(self, logs=None):
    super().on_train_begin(logs)
    self.best, self.best_epoch, self.wait, _ = early_stopping_state(
        self.past_val_losses, self.patience)


class FiniteBackupAndRestore(keras.callbacks.BackupAndRestore):
  """BackupAndRestore that never overwrites the last good backup with non-finite weights.

  Keras 3.15 restores the weights (with the optimizer state) and the epoch; a backup taken
  mid-epoch resumes at the start of that epoch. Everything else (early stopping, the best
  checkpoint's threshold, history.csv) is rebuilt by train_and_evaluate.
  """

  def _save_model(self):
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_weights):
      raise FloatingPointError(
          "weights became NaN or inf; training stopped. The last good state is kept in "
          f"{self.backup_dir} and the best weights in its parent directory; lower "
          "--config.learning_rate (or use --config.precision=float32) and run again.")
    super()._save_model()

  def on_epoch_end(self, epoch, logs=None):
    super().on_epoch_end(epoch, logs)
    if self.save_freq != "epoch":  # with a step count keras saves mid-epoch only
      self._save_model()


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
  models.backbone_of(net).trainable = trainable
  if config.bn_mode == "frozen":
    models.freeze_batch_norm(net)


class FreezeBackbone(keras.callbacks.Callback):
  """Keeps the backbone frozen (BatchNorm in inference mode) for the first N epochs."""

  def __init__(self, net, config):
    super().__init__()
    self.net = net
    self.config = config

  def on_epoch_begin(self, epoch, logs=None):
    trainable = epoch >= self.config.freeze_backbone_epochs
    if models.backbone_of(self.net).trainable != trainable:
      set_backbone_trainable(self.net, self.config, trainable)
      self.model.make_train_function(force=True)
      logging.info("epoch %d: backbone %s", epoch + 1, "trainable" if trainable else "frozen")


class Progress(keras.callbacks.Callback):
  """One line per epoch: loss, MAE in pixels, images/s, time left; adds learning_rate to logs."""

  def __init__(self, num_epochs, steps_per_epoch, global_batch, log_every_steps):
    super().__init__()
    self.num_epochs = num_epochs
    self.steps_per_epoch = steps_per_epoch
    self.global_batch = global_batch
    self.log_every_steps = log_every_steps
    self.epoch_seconds = []

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch
    self.start = time.time()

  def on_train_batch_end(self, batch, logs=None):
    if self.log_every_steps and (batch + 1) % self.log_every_steps == 0:
      seconds = time.time() - self.start
      logging.info("epoch %d step %d/%d: loss %.5f, MAE %.2f px, %.1f images/s",
                   self.epoch + 1, batch + 1, self.steps_per_epoch, logs["loss"],
                   logs["mae_px"], (batch + 1) * self.global_batch / seconds)

  def on_epoch_end(self, epoch, logs=None):
    seconds = time.time() - self.start
    self.epoch_seconds.append(seconds)
    logs["learning_rate"] = current_lr(self.model.optimizer)
    left = (self.num_epochs - epoch - 1) * sum(self.epoch_seconds) / len(self.epoch_seconds)
    logging.info(
        "epoch %d/%d: loss %.5f, MAE %.2f px | val_loss %.5f, val MAE %.2f px | lr %.2g | "
        "%.1f images/s, %.1f s, at most %s left", epoch + 1, self.num_epochs, logs["loss"],
        logs["mae_px"], logs["val_loss"], logs["val_mae_px"], logs["learning_rate"],
        self.steps_per_epoch * self.global_batch / seconds, seconds,
        time.strftime("%H:%M:%S", time.gmtime(left)))


# The run.

def _check(config, strategy):
  if not config.data_dir:
    raise ValueError("config.data_dir is not set: pass --config.data_dir=DIR, a dataset "
                     "written by `python -m tools.make_tfrecords`")
  if not tf.io.gfile.isdir(config.data_dir):
    raise FileNotFoundError(f"config.data_dir={config.data_dir}: no such directory")
  if config.bn_mode not in BN_MODES:
    raise ValueError(f"bn_mode={config.bn_mode!r}: choose one of {BN_MODES}")
  problem = jit_compile_problem(config.jit_compile, strategy.num_replicas_in_sync)
  if problem:
    raise ValueError(problem)
  if config.batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"batch_size={config.batch_size} (global) is not divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas")


def _steps_per_epoch(config):
  if config.steps_per_epoch:
    return config.steps_per_epoch
  num_train = input_pipeline.num_examples(config.data_dir, "train")
  steps = num_train // config.batch_size
  if not steps:
    raise ValueError(f"the train split of {config.data_dir} has {num_train} examples, fewer than "
                     f"one batch: lower --config.batch_size (now {config.batch_size})")
  return steps


def _datasets(config, strategy, initial_epoch):
  cache = {"memory": True, "none": False}.get(config.cache, config.cache)
  if input_pipeline.num_examples(config.data_dir, "validation") == 0:
    raise ValueError(f"the validation split of {config.data_dir} is empty: early stopping and "
                     "the best checkpoint need one (make_tfrecords --split)")
  common = dict(global_batch_size=config.batch_size, image_size=config.image_size, cache=cache)
  # A resumed run reshuffles differently from the epochs it already ran.
  train = input_pipeline.distributed_dataset(
      strategy, config.data_dir, "train", train=True, shuffle_buffer=config.shuffle_buffer,
      seed=config.seed + initial_epoch, **common)
  validation = input_pipeline.distributed_dataset(
      strategy, config.data_dir, "validation", train=False, **common)
  return train, validation


def build_trainer(config, strategy, schema, steps_per_epoch, mean=None):
  """The inference model inside a compiled KeypointTrainer, its optimizer built on every weight."""
  with strategy.scope():
    net = models.create_model(config, schema.num_keypoints, mean)
    if config.bn_mode == "frozen":  # a resumed run's backup overwrites these statistics
      models.estimate_batch_norm_statistics(net, _first_train_images(config))
    if config.sync_batch_norm:
      for layer in models.batch_norm_layers(net):
        layer.synchronized = True
    trainer = KeypointTrainer(net, config.augment, schema.flip_permutation, config.seed)
    lr = learning_rate(config, strategy.num_replicas_in_sync)
    trainer.compile(
        optimizer=create_optimizer(config, lr_schedule(config, lr, steps_per_epoch)),
        loss=_loss(config),
        metrics=[keras.metrics.MeanAbsoluteError(name="mae"), mae_px_metric(config.image_size)],
        jit_compile=config.jit_compile)
    trainer.build((None, config.image_size, config.image_size, 3))
    # Built before any freezing, so unfreezing the backbone later finds its slots ready.
    trainer.optimizer.build(trainer.trainable_variables)
  return net, trainer


@contextlib.contextmanager
def _quiet_end_of_data():
  """Keras warns "Your input ran out of data; interrupting training" after every evaluation of a
  dataset of unknown length (the validation split); the training data repeats forever."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    yield


def _first_train_images(config, count=BN_ESTIMATION_IMAGES):
  batch = input_pipeline.create_split(config.data_dir, "train", batch_size=count, train=False,
                                      image_size=config.image_size, cache=False)
  return next(iter(batch))[0]


def _write_config(config, workdir):
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(f"{workdir}/config.json", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config, workdir):
  """Trains config's model on config.data_dir into workdir; returns the final metrics."""
  strategy = create_strategy(config.strategy, config.tpu)
  _check(config, strategy)
  precision = resolve_precision(config.precision, strategy)
  keras.mixed_precision.set_global_policy(precision)
  keras.utils.set_random_seed(config.seed)
  if (config.jit_compile and precision == "mixed_float16"
      and strategy.num_replicas_in_sync > 1):
    logging.warning("jit_compile with mixed_float16 under %d replicas has crashed in "
                    "LossScaleOptimizer (keras-team/keras#21366)", strategy.num_replicas_in_sync)
  logging.info("strategy %s, %d replicas, precision %s, jit_compile %s",
               type(strategy).__name__, strategy.num_replicas_in_sync, precision,
               config.jit_compile)

  out_dir = _writer_dir(workdir, strategy)
  _write_config(config, out_dir)
  schema = dataset.load_schema(config.data_dir)
  steps_per_epoch = _steps_per_epoch(config)
  checkpoint_dir = f"{out_dir}/checkpoints"
  backup_dir, best_path = f"{checkpoint_dir}/backup", f"{checkpoint_dir}/best.weights.h5"
  history_path = f"{out_dir}/history.csv"

  initial_epoch = _backup_epoch(backup_dir)
  past = [float(row["val_loss"]) for row in _history_up_to(history_path, initial_epoch)]
  best, best_epoch, _, stopped = early_stopping_state(past, config.early_stopping_patience)
  mean = input_pipeline.train_mean_keypoints(config.data_dir) if config.init_output_at_mean else None
  net, trainer = build_trainer(config, strategy, schema, steps_per_epoch, mean)
  set_backbone_trainable(net, config, initial_epoch >= config.freeze_backbone_epochs)

  train_ds, val_ds = _datasets(config, strategy, initial_epoch)
  if stopped or initial_epoch >= config.num_epochs:
    logging.info("%s already finished training (%d epochs run)", workdir, initial_epoch)
  else:
    if initial_epoch:
      logging.info("resuming %s at epoch %d (best val_loss %.5f after epoch %d)", workdir,
                   initial_epoch + 1, best, best_epoch + 1)
    callbacks = [
        StopOnNonFiniteLoss(),
        Progress(config.num_epochs, steps_per_epoch, config.batch_size, config.log_every_steps),
        FreezeBackbone(net, config),
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", mode="min",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(f"{out_dir}/tensorboard", write_graph=False),
        FiniteBackupAndRestore(backup_dir, save_freq=config.checkpoint_every_steps,
                               delete_checkpoint=False),
    ]
    if config.early_stopping_patience:
      callbacks.insert(3, ResumedEarlyStopping(past, config.early_stopping_patience))
    with _quiet_end_of_data():
      trainer.fit(train_ds, epochs=config.num_epochs, steps_per_epoch=steps_per_epoch,
                  validation_data=val_ds, callbacks=callbacks, shuffle=False, verbose=0)

  if tf.io.gfile.exists(best_path):
    trainer.load_weights(best_path)
  with _quiet_end_of_data():
    metrics = {f"val_{k}": float(v) for k, v in
               trainer.evaluate(val_ds, verbose=0, return_dict=True).items()}
  history = _history_up_to(history_path, config.num_epochs)
  metrics.update(epochs=len(history),
                 best_epoch=early_stopping_state(
                     [float(row["val_loss"]) for row in history], 0)[1] + 1)
  logging.info("best weights (epoch %d of %d): val_loss %.5f, val MAE %.2f px",
               metrics["best_epoch"], metrics["epochs"], metrics["val_loss"],
               metrics["val_mae_px"])
  save_inference_model(config, schema.num_keypoints, net, f"{out_dir}/model.keras", mean)
  if config.evaluate_at_end and _is_chief(strategy):
    metrics["test"] = evaluate.evaluate_workdir(workdir)
  return metrics


def save_inference_model(config, num_keypoints, net, path, mean_keypoints=None):
  """Saves net's weights in a float32 copy of the model, whatever policy it trained under."""
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("float32")
  try:
    model = models.create_model(_with_weights_none(config), num_keypoints, mean_keypoints)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  model.set_weights(net.get_weights())
  if config.bn_mode == "frozen":
    models.freeze_batch_norm(model)
  model.save(path)
  logging.info("saved the inference model to %s", path)


def _with_weights_none(config):
  config = config.copy_and_resolve_references()
  config.weights = "none"
  return config
