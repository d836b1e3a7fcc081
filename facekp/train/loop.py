"""The training run: a config and a dataset -> a workdir, resumable after any interruption.

The model in training (its augmenting step, loss, optimiser) is facekp.train.keypoint_trainer's;
checkpoints, history and the rules of resuming are facekp.train.checkpointing's.

What training writes (names in facekp.core.workdir): config.json, train_mean_keypoints.json,
checkpoints/ (best.weights.h5, the weights with the lowest config.monitor, and backup/ for
resuming), history.csv (a row per epoch, counted from 1), tensorboard/ and model.keras (the
inference model with the best weights). The end-of-training evaluation is facekp.main's.

Training records its dataset (workdir dataset.json); a rerun on a dataset rewritten since (other
splits, images or labels) is refused (facekp.train.resume_rules.check_dataset).

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
import warnings

from absl import logging
import keras
import tensorflow as tf

from facekp.core import dataset_info
from facekp.core import drawing
from facekp.core import files
from facekp.core import workdir as workdir_lib
from facekp.input import input_pipeline
from facekp.train import callbacks as callbacks_lib
from facekp.train import checkpointing
from facekp.train import config_rules
from facekp.train import hardware
from facekp.train import keypoint_trainer
from facekp.train import resume_rules


def train_and_evaluate(config, workdir):
  """Trains config's model on config.data_dir into workdir; returns the validation metrics of
  the best weights, the number of epochs run and the best epoch (counted from 1)."""
  config_rules.validate(config)
  strategy = hardware.create_strategy(config.strategy, config.tpu, config.multi_worker_timeout_s)
  _check(config, strategy)
  with hardware.WriterDir(workdir) as writer, _workdir_lock(writer):
    return _train(config, str(workdir), writer, strategy)


def _train(config, workdir, writer, strategy):
  """The run: state is read from `workdir` (the chief's) and written to writer.path."""
  dataset = resume_rules.check_dataset(workdir, config.data_dir)
  _set_precision(config, strategy)
  keras.utils.set_random_seed(config.seed)
  out = writer.path
  workdir_lib.write_config(out, config)
  workdir_lib.write_dataset(out, config.data_dir, dataset)
  schema = dataset_info.load_schema(config.data_dir)
  steps_per_epoch = _steps_per_epoch(config)
  mean = input_pipeline.train_mean_keypoints(config.data_dir)
  workdir_lib.write_train_mean(out, mean, config.data_dir,
                               input_pipeline.num_examples(config.data_dir, "train"))
  initial_mean = mean if config.init_output_at_mean else None
  net, trainer = keypoint_trainer.build_trainer(config, strategy, schema, steps_per_epoch,
                                                initial_mean)

  point = checkpointing.ResumePoint.restore(trainer, workdir)
  if hardware.is_multi_worker(strategy):
    hardware.check_same_on_every_worker(strategy, point.state.step, "the step to resume from")
  if point.finished(config):
    logging.info("%s already finished training (%d epochs run)", workdir, point.state.epoch)
  elif point.state.epoch or point.state.batch:
    logging.info("resuming %s at %s (step %d)", workdir, point.state.describe(), point.state.step)
  callbacks_lib.set_backbone_trainable(
      net, config, point.state.epoch >= config.freeze_backbone_epochs)
  val_ds = _validation_dataset(config, strategy)
  pictures = ((*input_pipeline.first_examples(config.data_dir, "validation", drawing.GRID_FACES,
                                                config.image_size), schema.names)
              if writer.chief else None)
  run = Fit(config, trainer, net, strategy, writer, steps_per_epoch, val_ds, pictures)
  if point.state.batch and not point.finished(config):
    # Killed inside an epoch: finish that epoch alone first (Keras runs the same number of
    # steps in every epoch of one fit), then the rest.
    point = run(point, epochs=point.state.epoch + 1)
  if not point.finished(config):
    point = run(point, epochs=config.num_epochs)

  if hardware.is_multi_worker(strategy):  # until the chief has written its last checkpoint
    hardware.sum_over_replicas(strategy, 0.0)
  metrics = _best_weights_metrics(config, trainer, workdir, point, val_ds)
  if writer.chief:
    keypoint_trainer.save_inference_model(config, schema.num_keypoints,
                                          trainer.inference_weights(),
                                          workdir_lib.path(out, workdir_lib.MODEL), initial_mean)
  if hardware.is_multi_worker(strategy):  # the others wait until the chief has saved its model
    hardware.sum_over_replicas(strategy, 0.0)
  return metrics


class Fit:
  """One keras fit of the run, from a ResumePoint to `epochs`, with every callback: progress,
  checkpoints, history, TensorBoard, early stopping continued from the history."""

  def __init__(self, config, trainer, net, strategy, writer, steps_per_epoch, val_ds, pictures):
    self.config, self.trainer, self.net, self.strategy = config, trainer, net, strategy
    self.writer, self.steps_per_epoch = writer, steps_per_epoch
    self.val_ds, self.pictures = val_ds, pictures

  def callbacks(self, point):
    config, out = self.config, self.writer.path
    backup = checkpointing.Backup(checkpointing.backup_dir(out), config.checkpoint_every_steps,
                                  self.steps_per_epoch, point.state,
                                  checkpointing.best_weights_path(out))
    callbacks = [
        callbacks_lib.StopOnNonFiniteLoss(),
        callbacks_lib.FreezeBackbone(self.net, config),
        checkpointing.BestCheckpoint(checkpointing.best_weights_path(out), config.monitor,
                                     point.best(config.monitor)[0], backup.last_good),
        checkpointing.history_logger(workdir_lib.path(out, workdir_lib.HISTORY), point.rows),
        keras.callbacks.TensorBoard(workdir_lib.path(out, workdir_lib.TENSORBOARD),
                                    write_graph=False),
        backup,
    ]
    if self.writer.chief:  # progress lines go before the callbacks that read its learning_rate
      callbacks.insert(0, callbacks_lib.Progress(config.num_epochs, self.steps_per_epoch,
                                                 config.batch_size, config.log_every_steps,
                                                 first_batch=point.state.batch))
      callbacks.append(callbacks_lib.ValidationPictures(
          *self.pictures,
          f"{workdir_lib.path(out, workdir_lib.TENSORBOARD)}/validation"))
    if config.early_stopping_patience:
      callbacks.insert(3, checkpointing.ResumedEarlyStopping(
          point.monitored(config.monitor), config.early_stopping_patience, config.monitor))
    return callbacks, backup

  def __call__(self, point, epochs):
    """Fits from `point` to the end of epoch `epochs` (or an earlier stop); the new point."""
    callbacks, backup = self.callbacks(point)
    with _quiet_end_of_data(), input_pipeline.naming_damaged_records(
        self.config.data_dir, ("train", "validation")):
      self.trainer.fit(_train_dataset(self.config, self.strategy, point.state),
                       initial_epoch=point.state.epoch, epochs=epochs,
                       steps_per_epoch=self.steps_per_epoch - point.state.batch,
                       validation_data=self.val_ds, callbacks=callbacks, shuffle=False,
                       verbose=0)
    return checkpointing.ResumePoint(backup.saved, point.rows)


def _best_weights_metrics(config, trainer, workdir, point, val_ds):
  """The validation metrics of the best weights (loaded into the trainer), the epochs run and
  the best epoch."""
  best_path = checkpointing.best_weights_path(workdir)
  if tf.io.gfile.exists(best_path):
    trainer.load_weights(best_path)
  with _quiet_end_of_data():
    metrics = {f"val_{k}": float(v) for k, v in
               trainer.evaluate(val_ds, verbose=0, return_dict=True).items()}
  best_epoch = point.best(config.monitor)[1]
  metrics.update(epochs=len(point.rows), best_epoch=best_epoch, monitor=config.monitor)
  logging.info("best weights (epoch %d of %d, by %s): val_loss %.5f, val MAE %.2f px",
               best_epoch, len(point.rows), config.monitor, metrics["val_loss"],
               metrics["val_mae_px"])
  return metrics


def _check(config, strategy):
  """What config_rules.validate cannot know: the replicas of this strategy."""
  problem = hardware.jit_compile_problem(config.jit_compile, strategy.num_replicas_in_sync)
  if problem:
    raise ValueError(problem)
  if config.batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"batch_size={config.batch_size} (global) is not divisible by the "
                     f"{strategy.num_replicas_in_sync} replicas")


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


def _workdir_lock(writer):
  if not writer.chief:
    return contextlib.nullcontext()
  return files.folder_lock(writer.path, "--workdir")


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


@contextlib.contextmanager
def _quiet_end_of_data():
  """Keras warns "Your input ran out of data; interrupting training" after every evaluation of a
  dataset of unknown length (the validation split); the training data repeats forever."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    yield
