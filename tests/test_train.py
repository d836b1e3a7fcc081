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

from configs import tiny
from facekp import dataset
from facekp import input_pipeline
from facekp import models
from facekp import schema as schema_lib
from facekp import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
MEAN_FACE = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]])
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def write_dataset(out, sizes=(("train", 32), ("validation", 8), ("test", 8)), size=32, seed=0):
  """Faces shifted at random, each keypoint a 3x3 dot of its own colour on a noisy background."""
  rng = np.random.default_rng(seed)
  spec = dataset.features(SCHEMA.num_keypoints)
  tf.io.gfile.makedirs(out)
  for split, n in sizes:
    examples = []
    for i in range(n):
      points = MEAN_FACE + rng.uniform(-0.1, 0.1, (1, 2)) + rng.normal(0, 0.02, (5, 2))
      image = rng.integers(60, 120, (size, size, 3)).astype(np.uint8)
      for (x, y), colour in zip((points * size).astype(int), COLOURS):
        image[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = colour
      examples.append({
          "image": tf.io.encode_png(image).numpy(), "image_name": f"{split}_{i}.png",
          "height": size, "width": size, "keypoints_px": (points * size).astype(np.float32),
          "keypoints": points.astype(np.float32)})
    dataset.write_shard(dataset.shard_path(out, split, 0, 1), examples, spec)
  dataset.write_metadata(out, spec, SCHEMA)


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
  metrics = train.train_and_evaluate(config, workdir)

  history = read_history(workdir)
  assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3]
  losses = [float(row["loss"]) for row in history]
  assert losses[-1] < 0.8 * losses[0]
  assert metrics["epochs"] == 4
  best = min(float(row["val_loss"]) for row in history)
  assert metrics["val_loss"] == pytest.approx(best, rel=1e-4)
  assert metrics["val_mae_px"] == pytest.approx(metrics["val_mae"] * 32, rel=1e-4)
  for name in ("config.json", "model.keras", "checkpoints/best.weights.h5", "tensorboard"):
    assert os.path.exists(f"{workdir}/{name}"), name
  assert json.load(open(f"{workdir}/config.json"))["augment"]["flip"] == 0.5

  model = keras.models.load_model(f"{workdir}/model.keras")
  val = input_pipeline.load_arrays(data_dir, "validation", image_size=32)
  predicted = model(val["images"])
  assert predicted.dtype == tf.float32
  assert not any(layer.trainable for layer in models.batch_norm_layers(model))
  assert float(keras.losses.Huber()(val["keypoints"], predicted)) == pytest.approx(
      metrics["val_loss"], rel=1e-4)

  again = train.train_and_evaluate(config, workdir)
  assert len(read_history(workdir)) == 4
  assert again["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-5)


def test_mixed_bfloat16_on_cpu_gives_float32_outputs(data_dir, tmp_path):
  config = small_config(data_dir, precision="mixed_bfloat16", num_epochs=1, steps_per_epoch=2)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(metrics["val_loss"])
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  net = models.create_model(config, 5)
  assert net.get_layer("backbone").compute_dtype == "bfloat16"
  assert net(np.zeros((1, 32, 32, 3), np.uint8)).dtype == tf.float32
  saved = keras.models.load_model(f"{tmp_path}/model.keras")
  assert {l.compute_dtype for l in saved.get_layer("backbone").layers if l.weights} == {"float32"}


def test_frozen_backbone_stays_put_then_fine_tunes_after_a_resume(data_dir, tmp_path):
  workdir = str(tmp_path)
  config = small_config(data_dir, freeze_backbone_epochs=1, num_epochs=1, steps_per_epoch=3,
                        early_stopping_patience=0)
  strategy = train.create_strategy("one_device")

  def backbone_weights():
    keras.utils.set_random_seed(config.seed)
    net, trainer = train.build_trainer(config, strategy, SCHEMA, config.steps_per_epoch)
    if os.path.exists(f"{workdir}/checkpoints/backup/latest.weights.h5"):
      trainer.load_weights(f"{workdir}/checkpoints/backup/latest.weights.h5")
    return models.backbone_of(net).get_weights()

  initial = backbone_weights()
  train.train_and_evaluate(config, workdir)
  assert all(np.array_equal(a, b) for a, b in zip(initial, backbone_weights()))
  config.num_epochs = 2
  train.train_and_evaluate(config, workdir)
  assert not all(np.array_equal(a, b) for a, b in zip(initial, backbone_weights()))


def test_early_stopping_state_counts_like_keras():
  assert train.early_stopping_state([], 2) == (None, 0, 0, False)
  assert train.early_stopping_state([3.0, 2.0, 2.5], 2) == (2.0, 1, 1, False)
  assert train.early_stopping_state([3.0, 2.0, 2.5, 2.1], 2) == (2.0, 1, 2, True)
  assert train.early_stopping_state([3.0, 2.0, 2.5, 2.1], 0) == (2.0, 1, 2, False)

  callback = train.ResumedEarlyStopping([3.0, 2.0, 2.5], patience=2)
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  callback.set_model(model)
  callback.on_train_begin()
  callback.on_epoch_end(3, {"val_loss": 2.1})
  assert model.stop_training and callback.best == 2.0


def test_a_backup_never_holds_non_finite_weights(tmp_path):
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("adam", "mse")
  backup = train.FiniteBackupAndRestore(str(tmp_path), save_freq=1)
  backup.set_model(model)
  backup.on_train_batch_end(0)
  saved = os.path.getmtime(f"{tmp_path}/latest.weights.h5")
  model.layers[0].kernel.assign(np.full((2, 1), np.nan, np.float32))
  with pytest.raises(FloatingPointError, match="NaN or inf"):
    backup.on_train_batch_end(1)
  assert os.path.getmtime(f"{tmp_path}/latest.weights.h5") == saved

  with pytest.raises(FloatingPointError, match="loss became nan at epoch 1, step 3"):
    train.StopOnNonFiniteLoss().on_train_batch_end(2, {"loss": float("nan")})


def test_lr_schedule_and_linear_scaling(data_dir):
  config = small_config(data_dir, batch_size=64, learning_rate=1e-3, lr_scaling="linear",
                        lr_base_batch_size=32)
  assert train.learning_rate(config, num_replicas=2) == pytest.approx(2e-3)
  config.update(lr_schedule="cosine", warmup_epochs=1.0, num_epochs=3)
  schedule = train.lr_schedule(config, 1e-3, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(30)) == pytest.approx(0.0, abs=1e-9)
  config.lr_schedule = "constant"
  assert float(train.lr_schedule(config, 1e-3, 10)(25)) == pytest.approx(1e-3)


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
      from configs import tiny
      from facekp import train
      losses = {{}}
      for strategy in ("one_device", "mirrored"):
        config = tiny.get_config()
        config.update(data_dir={data_dir!r}, image_size=32, feature_stride=8,
                      evaluate_at_end=False, num_epochs=2,
                      steps_per_epoch=3, batch_size=8, dropout=0.0, sync_batch_norm=True,
                      strategy=strategy)
        train.train_and_evaluate(config, {str(tmp_path)!r} + "/" + strategy)
        rows = open({str(tmp_path)!r} + "/" + strategy + "/history.csv").read().splitlines()[1:]
        losses[strategy] = [[float(v) for v in row.split(",")[2:]] for row in rows]
      config.update(jit_compile=True, strategy="mirrored")
      try:
        train.train_and_evaluate(config, {str(tmp_path)!r} + "/xla")
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
  command = [sys.executable, "-m", "facekp.main", "--config=configs/tiny.py",
             f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.image_size=32",
             "--config.feature_stride=8",
             "--config.evaluate_at_end=false", "--config.num_epochs=4",
             "--config.steps_per_epoch=6", "--config.checkpoint_every_steps=2",
             "--config.early_stopping_patience=10"]
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
  assert [int(row["epoch"]) for row in history] == [0, 1, 2, 3]

  model = keras.models.load_model(f"{workdir}/model.keras")
  val = input_pipeline.load_arrays(data_dir, "validation", image_size=32)
  val_loss = keras.losses.Huber()(val["keypoints"], model.predict(val["images"], verbose=0))
  assert float(val_loss) == pytest.approx(min(float(row["val_loss"]) for row in history),
                                          rel=1e-3)
