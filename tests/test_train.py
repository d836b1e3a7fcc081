"""Trainer tests on a synthetic dataset: coloured dots where the keypoints are."""
import csv
import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from facekp.configs import tiny
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import schema as schema_lib
from facekp.core import workdir as workdir_lib
from facekp.data import shards
from facekp.input import input_pipeline
from facekp.models import keypoint_model
from facekp.train import callbacks as callbacks_lib
from facekp.train import checkpointing
from facekp.train import hardware
from facekp.train import keypoint_trainer
from facekp.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
MEAN_FACE = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]])
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def write_dataset(out, sizes=(("train", 32), ("validation", 8), ("test", 8)), size=32, seed=0,
                  corrupt=()):
  """Faces shifted at random, each keypoint a 3x3 dot of its own colour on a noisy background;
  the (split, index) pairs in `corrupt` hold a PNG cut short (its record's CRC is valid)."""
  rng = np.random.default_rng(seed)
  spec = dataset_info.features(SCHEMA.num_keypoints)
  tf.io.gfile.makedirs(out)
  for split, n in sizes:
    examples = []
    for i in range(n):
      points = MEAN_FACE + rng.uniform(-0.1, 0.1, (1, 2)) + rng.normal(0, 0.02, (5, 2))
      image = rng.integers(60, 120, (size, size, 3)).astype(np.uint8)
      for (x, y), colour in zip((points * size).astype(int), COLOURS):
        image[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = colour
      png = tf.io.encode_png(image).numpy()
      examples.append({
          "image": png[:60] if (split, i) in corrupt else png, "image_name": f"{split}_{i}.png",
          "height": size, "width": size, "keypoints_px": (points * size).astype(np.float32),
          "keypoints": points.astype(np.float32)})
    shards.write_shard(dataset_info.shard_path(out, split, 0, 1), examples, spec)
  shards.write_metadata(out, spec, SCHEMA)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("data"))
  write_dataset(out)
  return out


def small_config(data_dir, **overrides):
  config = tiny.get_config()
  config.data_dir = data_dir
  config.image_size = 32
  config.feature_stride = 8  # a third of MobileNetV2's layers: traces and trains in seconds
  config.evaluate_at_end = False
  config.update(overrides)
  return config


def tensorboard_summaries(workdir):
  """{"scalars": tag names, "images": number of image summaries} of a run's event files."""
  scalars, images = set(), 0
  for path in tf.io.gfile.glob(f"{workdir}/tensorboard/*/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          images += 1
        else:
          scalars.add(value.tag.split("/")[-1].replace("epoch_", ""))
  return {"scalars": scalars, "images": images}


def read_history(workdir):
  with open(f"{workdir}/history.csv") as f:
    return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def float32_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def test_tiny_model_trains_with_augmentation_and_a_rerun_trains_no_more(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = small_config(data_dir, num_epochs=4, steps_per_epoch=6, early_stopping_patience=0,
                        head="flatten", output_scale=0.1, bn_mode="frozen")
  config.augment.update(flip=0.5, brightness=0.1)
  metrics = loop.train_and_evaluate(config, workdir)

  history = read_history(workdir)
  assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4]
  losses = [float(row["loss"]) for row in history]
  assert losses[-1] < 0.8 * losses[0]
  assert metrics["epochs"] == 4
  # The best weights are those of the lowest val MAE in pixels (config.monitor).
  best = min(float(row["val_mae_px"]) for row in history)
  assert metrics["val_mae_px"] == pytest.approx(best, rel=1e-4)
  assert metrics["best_epoch"] == 1 + [float(r["val_mae_px"]) for r in history].index(best)
  assert metrics["val_mae_px"] == pytest.approx(metrics["val_mae"] * 32, rel=1e-4)
  for name in ("config.json", "model.keras", "checkpoints/best.weights.h5", "tensorboard"):
    assert os.path.exists(f"{workdir}/{name}"), name
  assert json.load(open(f"{workdir}/config.json"))["augment"]["flip"] == 0.5
  np.testing.assert_allclose(workdir_lib.read_train_mean(workdir),
                             input_pipeline.train_mean_keypoints(data_dir), rtol=1e-6)
  summaries = tensorboard_summaries(workdir)
  assert "learning_rate" in summaries["scalars"]
  assert summaries["images"] == 4  # the validation faces, once per epoch

  model = keras.models.load_model(f"{workdir}/model.keras")
  val = input_pipeline.load_arrays(data_dir, "validation", image_size=32)
  predicted = model(val["images"])
  assert predicted.dtype == tf.float32
  assert not any(layer.trainable for layer in keypoint_model.batch_norm_layers(model))
  assert float(keras.losses.Huber()(val["keypoints"], predicted)) == pytest.approx(
      metrics["val_loss"], rel=1e-4)

  again = loop.train_and_evaluate(config, workdir)
  assert len(read_history(workdir)) == 4
  assert again["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)


def test_mixed_bfloat16_on_cpu_gives_float32_outputs(data_dir, tmp_path):
  config = small_config(data_dir, precision="mixed_bfloat16", num_epochs=1, steps_per_epoch=2)
  metrics = loop.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["val_loss"])
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  net = keypoint_model.create_model(config, 5)
  assert net.get_layer("backbone").compute_dtype == "bfloat16"
  assert net(np.zeros((1, 32, 32, 3), np.uint8)).dtype == tf.float32
  saved = keras.models.load_model(f"{tmp_path}/model.keras")
  assert {l.compute_dtype for l in saved.get_layer("backbone").layers if l.weights} == {"float32"}


def test_frozen_backbone_stays_put_then_fine_tunes_after_a_resume(data_dir, tmp_path):
  workdir = str(tmp_path)
  config = small_config(data_dir, freeze_backbone_epochs=1, num_epochs=1, steps_per_epoch=3,
                        early_stopping_patience=0)
  strategy = hardware.create_strategy("one_device")

  def backbone_weights():
    keras.utils.set_random_seed(config.seed)
    net, trainer = keypoint_trainer.build_trainer(config, strategy, SCHEMA, config.steps_per_epoch)
    if os.path.exists(f"{workdir}/checkpoints/backup/latest.weights.h5"):
      trainer.load_weights(f"{workdir}/checkpoints/backup/latest.weights.h5")
    return keypoint_model.backbone_of(net).get_weights()

  initial = backbone_weights()
  loop.train_and_evaluate(config, workdir)
  assert all(np.array_equal(a, b) for a, b in zip(initial, backbone_weights()))
  config.num_epochs = 2
  loop.train_and_evaluate(config, workdir)
  assert not all(np.array_equal(a, b) for a, b in zip(initial, backbone_weights()))


def test_early_stopping_state_counts_like_keras():
  assert checkpointing.early_stopping_state([], 2) == (None, 0, 0, False)
  assert checkpointing.early_stopping_state([3.0, 2.0, 2.5], 2) == (2.0, 1, 1, False)
  assert checkpointing.early_stopping_state([3.0, 2.0, 2.5, 2.1], 2) == (2.0, 1, 2, True)
  assert checkpointing.early_stopping_state([3.0, 2.0, 2.5, 2.1], 0) == (2.0, 1, 2, False)

  callback = checkpointing.ResumedEarlyStopping([3.0, 2.0, 2.5], 2, "val_mae_px")
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  callback.set_model(model)
  callback.on_train_begin()
  callback.on_epoch_end(3, {"val_mae_px": 2.1, "val_loss": 0.1})
  assert model.stop_training and callback.best == 2.0


def small_model():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("adam", "mse")
  model.optimizer.build(model.trainable_variables)
  return model


def test_a_backup_never_holds_non_finite_weights(tmp_path):
  model = small_model()
  backup = checkpointing.Backup(str(tmp_path), 1, 10, checkpointing.State(), "best.weights.h5")
  backup.set_model(model)
  backup.on_train_batch_end(0)
  saved = os.path.getmtime(f"{tmp_path}/latest.weights.h5")
  model.layers[0].kernel.assign(np.full((2, 1), np.nan, np.float32))
  with pytest.raises(FloatingPointError, match="NaN or inf"):
    backup.on_train_batch_end(1)
  assert os.path.getmtime(f"{tmp_path}/latest.weights.h5") == saved

  with pytest.raises(FloatingPointError, match="loss became nan at epoch 1, step 3"):
    callbacks_lib.StopOnNonFiniteLoss().on_train_batch_end(2, {"loss": float("nan")})


def two_backups(folder):
  """A backup at epoch 1 step 2 (kernel 1s), then one at the end of epoch 1 (kernel 2s)."""
  model = small_model()
  backup = checkpointing.Backup(str(folder), 2, 4, checkpointing.State(), "best.weights.h5")
  backup.set_model(model)
  model.layers[0].kernel.assign(np.ones((2, 1), np.float32))
  backup.save(checkpointing.State(0, 2, 2))
  model.layers[0].kernel.assign(np.full((2, 1), 2.0, np.float32))
  backup.save(checkpointing.State(1, 0, 4))
  return model


def restored(folder, caplog):
  model = small_model()
  caplog.clear()
  state = checkpointing.restore(model, str(folder))
  return state, float(model.layers[0].kernel.numpy()[0, 0])


@pytest.mark.parametrize("damage", ["truncated weights", "empty metadata", "weights missing",
                                    "metadata missing", "metadata not json"])
def test_a_damaged_latest_backup_resumes_from_the_previous_one(tmp_path, caplog, damage):
  two_backups(tmp_path)
  assert restored(tmp_path, caplog) == (checkpointing.State(1, 0, 4), 2.0)
  weights, metadata = tmp_path / "latest.weights.h5", tmp_path / "training_metadata.json"
  if damage == "truncated weights":
    weights.write_bytes(weights.read_bytes()[:1000])
  elif damage == "empty metadata":
    metadata.write_bytes(b"")
  elif damage == "weights missing":  # killed between keeping the previous pair and the rename
    weights.unlink()
  elif damage == "metadata missing":  # killed between the weights' rename and the metadata's
    metadata.unlink()
  else:
    metadata.write_text('{"epoch": 1, "bat')
  assert restored(tmp_path, caplog) == (checkpointing.State(0, 2, 2), 1.0)
  if damage in ("truncated weights", "empty metadata", "metadata not json"):
    assert "cannot be used" in caplog.text and "latest.weights.h5" in caplog.text


def test_with_no_usable_backup_the_run_starts_again_and_says_so(tmp_path, caplog):
  two_backups(tmp_path)
  for name in ("latest.weights.h5", "previous.weights.h5"):
    (tmp_path / name).write_bytes(b"")
  state, _ = restored(tmp_path, caplog)
  assert state == checkpointing.State()
  assert "no complete backup" in caplog.text and "starts again from epoch 1" in caplog.text


@pytest.fixture
def full_disk(tmp_path):
  """A 256 KiB tmpfs (root only; skipped elsewhere)."""
  folder = tmp_path / "full"
  folder.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                    capture_output=True).returncode:
    pytest.skip("mounting a tmpfs needs root")
  yield folder
  subprocess.run(["umount", str(folder)], check=True)  # fails while a file there is open


def test_a_full_disk_stops_with_a_message_naming_it_and_the_last_good_state(full_disk):
  model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2048)])  # 512 KiB of weights
  best = checkpointing.BestCheckpoint(str(full_disk / "best.weights.h5"), "val_mae_px", None,
                                      lambda: "backup of epoch 3 step 2 in backup/")
  best.set_model(model)
  with pytest.raises(files.DiskFullError) as error:
    best.on_epoch_end(0, {"val_mae_px": 1.0})
  message = str(error.value)
  assert "no space left on the disk of" in message and "best.weights.h5" in message
  assert "backup of epoch 3 step 2" in message
  assert os.listdir(full_disk) == []  # no partial file, no temporary left


def test_a_second_run_on_a_workdir_in_use_says_who_holds_it(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  with files.folder_lock(workdir, "--workdir"):
    with pytest.raises(files.FolderInUseError, match=f"{workdir} is in use by pid {os.getpid()}"):
      loop.train_and_evaluate(small_config(data_dir), workdir)


def test_a_corrupt_image_inside_a_valid_record_is_named_with_its_shard(tmp_path):
  data = str(tmp_path / "data")
  write_dataset(data, corrupt={("train", 5)})
  with pytest.raises(ValueError, match=r"corrupt image in .*facekp-train\.tfrecord-00000-of-00001, "
                     r"record 5 \(train_5\.png\)"):
    loop.train_and_evaluate(small_config(data, cache="none"), str(tmp_path / "run"))


class FakeTerminal(list):
  def write(self, text):
    self.append(text)

  def flush(self):
    pass

  def isatty(self):
    return True


def test_progress_redraws_one_line_on_a_terminal_and_stays_quiet_in_a_log(caplog):
  terminal = FakeTerminal()
  progress = callbacks_lib.Progress(2, 100, 8, 0, stream=terminal)
  progress.every = 0.0
  progress.on_epoch_begin(0)
  time.sleep(0.01)
  progress.on_train_batch_end(9, {"loss": 0.5, "mae_px": 3.0})
  assert terminal[-1].startswith("\repoch 1/2 step 10/100: loss 0.50000, MAE 3.00 px")
  assert "images/s, epoch" in terminal[-1] and "left, run at most" in terminal[-1]
  log = FakeTerminal()
  log.isatty = lambda: False
  quiet = callbacks_lib.Progress(2, 100, 8, 0, stream=log)
  quiet.on_epoch_begin(0)
  quiet.on_train_batch_end(9, {"loss": 0.5, "mae_px": 3.0})
  assert not log and "step 10/100" not in caplog.text


def test_lr_schedule_and_linear_scaling(data_dir):
  config = small_config(data_dir, batch_size=64, learning_rate=1e-3, lr_scaling="linear",
                        lr_base_batch_size=32)
  assert keypoint_trainer.learning_rate(config, num_replicas=2) == pytest.approx(2e-3)
  config.update(lr_schedule="cosine", warmup_epochs=1.0, num_epochs=3)
  schedule = keypoint_trainer.lr_schedule(config, 1e-3, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(30)) == pytest.approx(0.0, abs=1e-9)
  config.lr_schedule = "constant"
  assert float(keypoint_trainer.lr_schedule(config, 1e-3, 10)(25)) == pytest.approx(1e-3)


def _python(code, timeout=300):
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_mirrored_over_two_cpus_matches_one_device_and_refuses_xla(data_dir, tmp_path):
  out = _python(f"""
      import json, tensorflow as tf
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      from facekp.configs import tiny
      from facekp.train import loop
      losses = {{}}
      for strategy in ("one_device", "mirrored"):
        config = tiny.get_config()
        config.update(data_dir={data_dir!r}, image_size=32, feature_stride=8,
                      evaluate_at_end=False, num_epochs=2,
                      steps_per_epoch=3, batch_size=8, dropout=0.0, sync_batch_norm=True,
                      ema_decay=0.5, strategy=strategy)
        loop.train_and_evaluate(config, {str(tmp_path)!r} + "/" + strategy)
        rows = open({str(tmp_path)!r} + "/" + strategy + "/history.csv").read().splitlines()[1:]
        losses[strategy] = [[float(v) for v in row.split(",")[2:]] for row in rows]
      config.update(jit_compile=True, strategy="mirrored")
      try:
        loop.train_and_evaluate(config, {str(tmp_path)!r} + "/xla")
      except ValueError as e:
        losses["xla_error"] = str(e)
      print(json.dumps(losses))
      """)
  losses = json.loads(out.splitlines()[-1])
  np.testing.assert_allclose(losses["mirrored"], losses["one_device"], rtol=2e-3, atol=1e-6)
  # XLA cannot compile one step over logical CPU devices in TF 2.19: said before training.
  assert "jit_compile=True with several replicas" in losses["xla_error"]


def test_a_run_killed_mid_epoch_resumes_and_ends_at_the_same_epoch(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  command = [sys.executable, "-m", "facekp.main", "--config=tiny",
             f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.image_size=32",
             "--config.feature_stride=8",
             "--config.evaluate_at_end=false", "--config.num_epochs=4",
             "--config.steps_per_epoch=6", "--config.checkpoint_every_steps=2",
             "--config.early_stopping_patience=10", "--config.ema_decay=0.8"]
  with open(tmp_path / "killed.log", "w") as log:
    run = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
  metadata = f"{workdir}/checkpoints/backup/training_metadata.json"
  deadline = time.time() + 240
  while time.time() < deadline and run.poll() is None:
    try:
      with open(metadata) as f:
        state = json.load(f)
    except (OSError, ValueError):
      state = {"epoch": 0, "batch": 0}
    if state["epoch"] >= 1 and state["batch"] > 0:
      break
    time.sleep(0.02)
  run.kill()
  run.wait()
  assert run.returncode != 0, "the run ended before it could be killed mid-epoch"
  epochs_before = len(read_history(workdir))
  assert 1 <= epochs_before < 4

  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming {workdir} at epoch" in result.stderr
  history = read_history(workdir)
  assert [int(row["epoch"]) for row in history] == [1, 2, 3, 4]
  # Resumed at the step: 4 epochs of 6 steps, none done twice.
  with open(metadata) as f:
    assert json.load(f)["step"] == 24
  # --config=tiny is recorded as the packaged file it names (the model card's training command).
  assert workdir_lib.read_config_source(workdir)["config_file"] == tiny.__file__

  # The saved model holds the weight average of the best epoch, as validation scored it.
  model = keras.models.load_model(f"{workdir}/model.keras")
  val = input_pipeline.load_arrays(data_dir, "validation", image_size=32)
  mae_px = np.abs(val["keypoints"] - model.predict(val["images"], verbose=0)).mean() * 32
  assert mae_px == pytest.approx(min(float(row["val_mae_px"]) for row in history), rel=1e-3)


def test_the_pinned_keras_has_the_internals_training_uses():
  from facekp.train import keras_internals  # pylint: disable=g-import-not-at-top
  assert keras_internals.MISSING == [], (
      f"Keras {keras.__version__} lacks {keras_internals.MISSING} (facekp.train.keras_internals "
      f"was checked on {keras_internals.CHECKED_VERSIONS}): update that module")


def test_the_weight_average_follows_every_step_and_is_what_validation_reads(data_dir):
  config = small_config(data_dir, num_epochs=2, steps_per_epoch=3, early_stopping_patience=0,
                        ema_decay=0.5)
  strategy = hardware.create_strategy("one_device")
  net, trainer = keypoint_trainer.build_trainer(config, strategy, SCHEMA, 3)
  seen = [[w.numpy() for w in net.weights]]
  record = keras.callbacks.LambdaCallback(
      on_train_batch_end=lambda batch, logs: seen.append([w.numpy() for w in net.weights]))
  train = input_pipeline.load_arrays(data_dir, "train", image_size=32)
  trainer.fit(train["images"], train["keypoints"], batch_size=4, epochs=2, steps_per_epoch=3,
              callbacks=[record], verbose=0)
  expected = seen[0]
  for step, weights in enumerate(seen[1:], start=1):
    decay = min(0.5, (1 + step) / (10 + step))
    expected = [decay * a + (1 - decay) * w for a, w in zip(expected, weights)]
  moved = [i for i, (a, b) in enumerate(zip(seen[0], seen[-1])) if not np.allclose(a, b)]
  assert moved
  for i in moved:
    np.testing.assert_allclose(trainer.averages[i].numpy(), expected[i], rtol=1e-5, atol=1e-6)

  val = input_pipeline.load_arrays(data_dir, "validation", image_size=32)
  averaged = keypoint_model.create_model(config, 5)
  averaged.set_weights(trainer.inference_weights())
  np.testing.assert_allclose(trainer(val["images"], training=False), averaged(val["images"]),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(net(val["images"]), averaged(val["images"]), atol=1e-4)
  # That validation, the backups and the saved model use it end to end: the mid-epoch kill test.
