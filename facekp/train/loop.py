"""Training: the augmenting train step, the optimiser and its schedule, and the resumable fit.

What training writes (names in facekp.core.workdir): config.json, train_mean_keypoints.json,
checkpoints/ (best.weights.h5, the weights with the lowest config.monitor, and backup/ for
resuming), history.csv (a row per epoch, counted from 1), tensorboard/ and model.keras (the
inference model with the best weights). The end-of-training evaluation is facekp.main's.

Run the same command again after any interruption: training continues from the latest complete
backup (taken every config.checkpoint_every_steps steps and at each epoch end) at the step where
it was taken, with early stopping's count rebuilt from history.csv, and ends at the same epoch
and optimizer step as an uninterrupted run. (The epoch that was interrupted reports the training
metrics of its remaining steps only, and its examples are drawn in a new order.)

Several workers (hardware.py): every worker runs the same steps and callbacks; the chief writes
the workdir, the others a temporary folder. Training input is split between workers
(input_pipeline), validation is read whole by every worker so that its metrics are exact.
"""
import contextlib
import re
import warnings

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from facekp.core import dataset_info
from facekp.input import augment
from facekp.train import callbacks as callbacks_lib
from facekp.train import checkpointing
from facekp.train import config_rules
from facekp.core import drawing
from facekp.core import files
from facekp.train import hardware
from facekp.train import keras_internals
from facekp.input import input_pipeline
from facekp.models import keypoint_model
from facekp.core import workdir as workdir_lib

BN_ESTIMATION_IMAGES = 256  # bn_mode "frozen": statistics of the first training images
_IMAGE_DECODE_ERROR = re.compile(r"Invalid (PNG|JPEG) data|decode|Unknown image file format", re.I)


# The model in training.

class KeypointTrainer(keras.Model):
  """Wraps the inference model; its train step augments each batch on the device first.

  The augmentation seed of each step is (config.seed, step * replicas + replica): stateless,
  different on every replica and step, and the same again when a run is resumed.

  Two workarounds make Keras 3.15's fit and evaluate run under MultiWorkerMirroredStrategy
  (keras-team/keras#20585, tensorflow/tensorflow#72388): fit first reduces a real input batch
  over every worker just to learn its shapes (`strategy.reduce` of a PerReplica fails across
  workers), so the trainer is built from known shapes instead; and each step's logs are reduced
  over workers with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid
  reduction dimension 0"), so under several workers each log value gets a length-1 axis (the
  reduction then averages the replicas' values, as MirroredStrategy's does).
  """

  def __init__(self, net, augment_config, flip_permutation, seed, **kwargs):
    super().__init__(**kwargs)
    self.net = net
    self.augment_config = augment_config
    self.flip_permutation = tuple(flip_permutation)
    self.seed = int(seed)

  def call(self, images, training=None):
    return self.net(images, training=training)

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    example = (np.zeros((1,) + tuple(self.net.input_shape[1:]), np.uint8),
               np.zeros((1,) + tuple(self.net.output_shape[1:]), np.float32))
    with self.distribute_strategy.scope():
      keras_internals.build_from_example(self, example)

  def _reducible(self, logs):
    if not hardware.is_multi_worker(self.distribute_strategy):
      return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}

  def train_step(self, data):
    images, keypoints = data
    if any(self.augment_config.values()):
      context = tf.distribute.get_replica_context()
      step = (tf.cast(self.optimizer.iterations, tf.int64) * context.num_replicas_in_sync
              + tf.cast(context.replica_id_in_sync_group, tf.int64))
      seed = tf.stack([tf.constant(self.seed, tf.int64), step])
      images, keypoints = augment.augment_batch(
          images, keypoints, self.augment_config, seed, self.flip_permutation)
    return self._reducible(super().train_step((images, keypoints)))

  def test_step(self, data):
    return self._reducible(super().test_step(data))


# The choices of the fields below are config_lib's, checked before training starts.

def _loss(config):
  return keras.losses.Huber(delta=config.huber_delta) if config.loss == "huber" else config.loss


def mae_px_metric(image_size):
  """Mean absolute error in pixels of the model's input (normalised MAE * image size)."""
  def mae_px(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2)) * image_size
  return keras.metrics.MeanMetricWrapper(mae_px, name="mae_px")


def learning_rate(config, num_replicas):
  """The base learning rate, scaled linearly with the global batch when config.lr_scaling says so."""
  lr = config.learning_rate
  if config.lr_scaling == "linear":
    lr *= config.batch_size / config.lr_base_batch_size
  logging.info("learning rate %.3g (%s scaling; global batch %d = %d replicas x %d)", lr,
               config.lr_scaling, config.batch_size, num_replicas, config.batch_size // num_replicas)
  return lr


def lr_schedule(config, base_lr, steps_per_epoch):
  """Constant or cosine decay over the whole run, either after a linear warm-up from 0."""
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
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
  return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


# The run.

def _check(config, strategy):
  """What config_rules.validate cannot know: the replicas of this strategy."""
  problem = hardware.jit_compile_problem(config.jit_compile, strategy.num_replicas_in_sync)
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


def _cache(config):
  return {"memory": True, "none": False}.get(config.cache, config.cache)


def _train_dataset(config, strategy, state):
  # A resumed run draws its examples in a new order (the optimizer's step count continues).
  return input_pipeline.distributed_dataset(
      strategy, config.data_dir, "train", train=True, shuffle_buffer=config.shuffle_buffer,
      seed=config.seed + state.epoch * 1000 + state.batch, global_batch_size=config.batch_size,
      image_size=config.image_size, cache=_cache(config))


def _validation_dataset(config, strategy):
  if input_pipeline.num_examples(config.data_dir, "validation") == 0:
    raise ValueError(f"the validation split of {config.data_dir} is empty: early stopping and "
                     "the best checkpoint need one (make_tfrecords --split)")
  return input_pipeline.distributed_dataset(
      strategy, config.data_dir, "validation", train=False, global_batch_size=config.batch_size,
      image_size=config.image_size, cache=_cache(config), split_across_workers=False)


def build_trainer(config, strategy, schema, steps_per_epoch, mean=None):
  """The inference model inside a compiled KeypointTrainer, its optimizer built on every weight."""
  with strategy.scope():
    net = keypoint_model.create_model(config, schema.num_keypoints, mean)
    if config.bn_mode == "frozen":  # a resumed run's backup overwrites these statistics
      images = _first_examples(config, "train", BN_ESTIMATION_IMAGES)[0]
      keypoint_model.estimate_batch_norm_statistics(net, images)
    if config.sync_batch_norm:
      for layer in keypoint_model.batch_norm_layers(net):
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


def _first_examples(config, split, count):
  """(images, keypoints) NumPy arrays of the first `count` examples of a split, in stored order."""
  batch = input_pipeline.create_split(config.data_dir, split, batch_size=count, train=False,
                                      image_size=config.image_size, cache=False)
  return next(batch.take(1).as_numpy_iterator())


def _workdir_lock(writer):
  if not writer.chief:
    return contextlib.nullcontext()
  return files.folder_lock(writer.path, "--workdir")


def train_and_evaluate(config, workdir):
  """Trains config's model on config.data_dir into workdir; returns the validation metrics of
  the best weights, the number of epochs run and the best epoch (counted from 1)."""
  config_rules.validate(config)
  strategy = hardware.create_strategy(config.strategy, config.tpu, config.multi_worker_timeout_s)
  _check(config, strategy)
  with hardware.WriterDir(workdir) as writer, _workdir_lock(writer):
    return _train(config, str(workdir), writer, strategy)


def _set_precision(config, strategy):
  precision = hardware.resolve_precision(config.precision, strategy)
  keras.mixed_precision.set_global_policy(precision)
  if (config.jit_compile and precision == "mixed_float16"
      and strategy.num_replicas_in_sync > 1):
    logging.warning("jit_compile with mixed_float16 under %d replicas has crashed in "
                    "LossScaleOptimizer (keras-team/keras#21366)", strategy.num_replicas_in_sync)
  logging.info("strategy %s, %d replicas, precision %s, jit_compile %s",
               type(strategy).__name__, strategy.num_replicas_in_sync, precision,
               config.jit_compile)


def _train(config, workdir, writer, strategy):
  """The run: state is read from `workdir` (the chief's) and written to writer.path."""
  _set_precision(config, strategy)
  keras.utils.set_random_seed(config.seed)
  out = writer.path
  workdir_lib.write_config(out, config)
  schema = dataset_info.load_schema(config.data_dir)
  steps_per_epoch = _steps_per_epoch(config)
  mean = input_pipeline.train_mean_keypoints(config.data_dir)
  workdir_lib.write_train_mean(out, mean, config.data_dir,
                               input_pipeline.num_examples(config.data_dir, "train"))
  net, trainer = build_trainer(config, strategy, schema, steps_per_epoch,
                               mean if config.init_output_at_mean else None)
  state = checkpointing.restore(trainer, _backup_dir(workdir))
  if hardware.is_multi_worker(strategy):
    hardware.check_same_on_every_worker(strategy, state.step, "the step to resume from")
  rows = [row for row in workdir_lib.read_history(workdir_lib.path(workdir, workdir_lib.HISTORY))
          if int(row[workdir_lib.HISTORY_EPOCH]) <= state.epoch]
  callbacks_lib.set_backbone_trainable(net, config, state.epoch >= config.freeze_backbone_epochs)
  val_ds = _validation_dataset(config, strategy)
  pictures = ((*_first_examples(config, "validation", drawing.GRID_FACES), schema.names)
              if writer.chief else None)

  if _finished(config, state, rows):
    logging.info("%s already finished training (%d epochs run)", workdir, state.epoch)
  elif state.epoch or state.batch:
    logging.info("resuming %s at %s (step %d)", workdir, state.describe(), state.step)
  while not _finished(config, state, rows):
    start, state = state, _fit(config, trainer, net, strategy, writer, steps_per_epoch, state,
                               rows, val_ds, pictures)
    if state == start:  # stopped without finishing an epoch (cannot happen with a backup)
      break

  if hardware.is_multi_worker(strategy):  # until the chief has written its last checkpoint
    hardware.sum_over_replicas(strategy, 0.0)
  best_path = _best_path(workdir)
  if tf.io.gfile.exists(best_path):
    trainer.load_weights(best_path)
  with _quiet_end_of_data():
    metrics = {f"val_{k}": float(v) for k, v in
               trainer.evaluate(val_ds, verbose=0, return_dict=True).items()}
  best_epoch = checkpointing.early_stopping_state(
      checkpointing.monitored(rows, config.monitor), 0)[1] + 1
  metrics.update(epochs=len(rows), best_epoch=best_epoch, monitor=config.monitor)
  logging.info("best weights (epoch %d of %d, by %s): val_loss %.5f, val MAE %.2f px",
               best_epoch, len(rows), config.monitor, metrics["val_loss"], metrics["val_mae_px"])
  if writer.chief:
    save_inference_model(config, schema.num_keypoints, net,
                         workdir_lib.path(out, workdir_lib.MODEL),
                         mean if config.init_output_at_mean else None)
  if hardware.is_multi_worker(strategy):  # the others wait until the chief has saved its model
    hardware.sum_over_replicas(strategy, 0.0)
  return metrics


def _backup_dir(folder):
  return f"{workdir_lib.path(folder, workdir_lib.CHECKPOINTS)}/backup"


def _best_path(folder):
  return f"{workdir_lib.path(folder, workdir_lib.CHECKPOINTS)}/best.weights.h5"


def _finished(config, state, rows):
  if state.epoch >= config.num_epochs:
    return True
  past = checkpointing.monitored(rows, config.monitor)
  return checkpointing.early_stopping_state(past, config.early_stopping_patience)[3]


def _fit(config, trainer, net, strategy, writer, steps_per_epoch, state, rows, val_ds, pictures):
  """Fits from `state` to the end of the run, or to the end of the epoch a resumed run started
  inside (Keras runs the same number of steps in every epoch of one fit); the new State."""
  out = writer.path
  past = checkpointing.monitored(rows, config.monitor)
  best = checkpointing.early_stopping_state(past, 0)[0]
  backup = checkpointing.Backup(_backup_dir(out), config.checkpoint_every_steps,
                                steps_per_epoch, state, _best_path(out))
  callbacks = [
      callbacks_lib.StopOnNonFiniteLoss(),
      callbacks_lib.FreezeBackbone(net, config),
      checkpointing.BestCheckpoint(_best_path(out), config.monitor, best, backup.last_good),
      checkpointing.history_logger(workdir_lib.path(out, workdir_lib.HISTORY), rows),
      keras.callbacks.TensorBoard(workdir_lib.path(out, workdir_lib.TENSORBOARD),
                                  write_graph=False),
      backup,
  ]
  if writer.chief:  # progress lines go before the callbacks that read its learning_rate
    callbacks.insert(0, callbacks_lib.Progress(config.num_epochs, steps_per_epoch,
                                               config.batch_size, config.log_every_steps,
                                               first_batch=state.batch))
    callbacks.append(callbacks_lib.ValidationPictures(
        net, *pictures, f"{workdir_lib.path(out, workdir_lib.TENSORBOARD)}/validation"))
  if config.early_stopping_patience:
    callbacks.insert(3, checkpointing.ResumedEarlyStopping(
        past, config.early_stopping_patience, config.monitor))
  with _quiet_end_of_data(), _naming_corrupt_images(config.data_dir):
    trainer.fit(_train_dataset(config, strategy, state), initial_epoch=state.epoch,
                epochs=state.epoch + 1 if state.batch else config.num_epochs,
                steps_per_epoch=steps_per_epoch - state.batch, validation_data=val_ds,
                callbacks=callbacks, shuffle=False, verbose=0)
  return backup.saved


@contextlib.contextmanager
def _naming_corrupt_images(data_dir):
  """A stored image that does not decode (its record's CRC holds) stops training with the shard
  and the example named, where tf.data says only "Invalid PNG data"."""
  try:
    yield
  except tf.errors.InvalidArgumentError as e:
    where = (input_pipeline.undecodable_image(data_dir, ("train", "validation"))
             if _IMAGE_DECODE_ERROR.search(e.message) else None)
    if where is None:
      raise
    raise ValueError(f"corrupt image in {where}; rewrite the dataset with tools/make_tfrecords "
                     "(the last good checkpoints are kept)") from None


def save_inference_model(config, num_keypoints, net, path, mean_keypoints=None):
  """Saves net's weights in a float32 copy of the model, whatever policy it trained under."""
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("float32")
  try:
    model = keypoint_model.create_model(_with_weights_none(config), num_keypoints, mean_keypoints)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  model.set_weights(net.get_weights())
  if config.bn_mode == "frozen":
    keypoint_model.freeze_batch_norm(model)
  with files.atomic_path(path) as tmp:
    model.save(tmp)
  logging.info("saved the inference model to %s", path)


def _with_weights_none(config):
  config = config.copy_and_resolve_references()
  config.weights = "none"
  return config
