"""The model in training: the augmenting train step, the loss, the metric in pixels, the optimiser
and its schedule, and the float32 inference model saved from it."""
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from facekp.core import files
from facekp.input import augment
from facekp.input import input_pipeline
from facekp.models import keypoint_model
from facekp.train import hardware
from facekp.train import keras_internals

BN_ESTIMATION_IMAGES = 256  # bn_mode "frozen": statistics of the first training images


class KeypointTrainer(keras.Model):
  """Wraps the inference model; its train step augments each batch on the device first.

  The augmentation seed of each step is (config.seed, step * replicas + replica): stateless,
  different on every replica and step, and the same again when a run is resumed.

  With `ema_decay` the trainer also keeps an exponential moving average of the net's weights,
  updated after every step (with TensorFlow's warm-up, decay min(ema_decay, (1 + step) /
  (10 + step)), so the first steps' weights do not linger); calls outside training (validation,
  evaluate) read the average, and it is saved with the trainer's weights (backups, the best
  checkpoint), so a resumed run continues it.

  Two workarounds make Keras 3.15's fit and evaluate run under MultiWorkerMirroredStrategy
  (keras-team/keras#20585, tensorflow/tensorflow#72388): fit first reduces a real input batch
  over every worker just to learn its shapes (`strategy.reduce` of a PerReplica fails across
  workers), so the trainer is built from known shapes instead; and each step's logs are reduced
  over workers with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid
  reduction dimension 0"), so under several workers each log value gets a length-1 axis (the
  reduction then averages the replicas' values, as MirroredStrategy's does).
  """

  def __init__(self, net, augment_config, flip_permutation, seed, ema_decay=0.0, **kwargs):
    super().__init__(**kwargs)
    self.net = net
    self.augment_config = augment_config
    self.flip_permutation = tuple(flip_permutation)
    self.seed = int(seed)
    self.ema_decay = float(ema_decay)
    # Replicas hold the same weights after each step: the first replica's average stands for all.
    self.averages = [self.add_weight(shape=w.shape, dtype=w.dtype, trainable=False,
                                     initializer="zeros", aggregation="only_first_replica",
                                     name=f"ema_{i}")
                     for i, w in enumerate(net.weights)] if self.ema_decay else []
    for average, weight in zip(self.averages, net.weights):
      average.assign(weight)

  def call(self, images, training=None):
    if training or not self.averages:
      return self.net(images, training=training)
    with keras.StatelessScope(state_mapping=list(zip(self.net.weights, self.averages))):
      return self.net(images, training=False)

  def inference_weights(self):
    """The weights the inference model gets: the moving average's, or the net's own."""
    return [keras.ops.convert_to_numpy(w) for w in (self.averages or self.net.weights)]

  def _update_averages(self):
    step = tf.cast(self.optimizer.iterations, tf.float32)
    decay = tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
    for average, weight in zip(self.averages, self.net.weights):
      average.assign(decay * average + (1.0 - decay) * weight)

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
          images, keypoints, self.augment_config, seed, self.flip_permutation,
          chunk_size=0 if self.jit_compile else augment.CHUNK)
    logs = super().train_step((images, keypoints))
    if self.averages:
      self._update_averages()
    return self._reducible(logs)

  def test_step(self, data):
    return self._reducible(super().test_step(data))


def _loss(config):
  return keras.losses.Huber(delta=config.huber_delta) if config.loss == "huber" else config.loss


def mae_px_metric(image_size):
  """Mean absolute error in pixels of the model's input (normalised MAE * image size)."""
  def mae_px(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=(1, 2)) * image_size
  return keras.metrics.MeanMetricWrapper(mae_px, name="mae_px")


def learning_rate(config, num_replicas):
  """The base learning rate, scaled linearly with the global batch if config.lr_scaling says so."""
  lr = config.learning_rate
  if config.lr_scaling == "linear":
    lr *= config.batch_size / config.lr_base_batch_size
  logging.info("learning rate %.3g (%s scaling; global batch %d = %d replicas x %d)", lr,
               config.lr_scaling, config.batch_size, num_replicas,
               config.batch_size // num_replicas)
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


def build_trainer(config, strategy, schema, steps_per_epoch, mean=None):
  """The inference model inside a compiled KeypointTrainer, its optimizer built on every weight."""
  with strategy.scope():
    net = keypoint_model.create_model(config, schema.num_keypoints, mean)
    if config.bn_mode == "frozen":  # a resumed run's backup overwrites these statistics
      images = input_pipeline.first_examples(config.data_dir, "train", BN_ESTIMATION_IMAGES,
                                              config.image_size)[0]
      keypoint_model.estimate_batch_norm_statistics(net, images)
    if config.sync_batch_norm:
      for layer in keypoint_model.batch_norm_layers(net):
        layer.synchronized = True
    trainer = KeypointTrainer(net, config.augment, schema.flip_permutation, config.seed,
                              config.ema_decay)
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


def save_inference_model(config, num_keypoints, weights, path, mean_keypoints=None):
  """Saves `weights` (KeypointTrainer.inference_weights) in a float32 copy of the model, whatever
  policy it trained under."""
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("float32")
  try:
    model = keypoint_model.create_model(_with_weights_none(config), num_keypoints, mean_keypoints)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  model.set_weights(weights)
  if config.bn_mode == "frozen":
    keypoint_model.freeze_batch_norm(model)
  with files.atomic_path(path) as tmp:
    model.save(tmp)
  logging.info("saved the inference model to %s", path)


def _with_weights_none(config):
  config = config.copy_and_resolve_references()
  config.weights = "none"
  return config
