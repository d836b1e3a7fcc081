"""Two worker processes on localhost ports (MultiWorkerMirroredStrategy with TF_CONFIG).

The workers run facekp.main with mediapipe, cv2 and scipy made unimportable, so these tests also
show that training needs none of them (matplotlib it does: TensorBoard's face grids are drawn by
facekp.core.drawing, as evaluation's are).
"""
import csv
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from test_train import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKED = ("mediapipe", "cv2", "scipy")
RUN_MAIN_WITHOUT_BLOCKED = f"""
import importlib.abc, runpy, sys
class Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in {BLOCKED!r}:
      raise ImportError(name + " is blocked: training must not need it")
sys.meta_path.insert(0, Blocked())
runpy.run_module("facekp.main", run_name="__main__", alter_sys=True)
"""
# Same global batches on both sides: no shuffle (each worker reads every other record, the
# one-process run consecutive records, so every step sees the same 4 faces), no dropout, fixed
# BatchNorm statistics (estimated once on the same first training images).
SAME_STEPS = dict(image_size=32, feature_stride=8, evaluate_at_end=False, num_epochs=2,
                  steps_per_epoch=4, batch_size=4, shuffle_buffer=1, dropout=0.0,
                  bn_mode="frozen", early_stopping_patience=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("data"))
  write_dataset(out)
  return out


def worker_leftovers(tmp):
  """What a worker left in its TMPDIR, less the bytecode of TensorFlow's autograph modules
  (TensorFlow's own cache, which every TensorFlow program leaves in the system temp folder)."""
  return [path for path in tmp.rglob("*") if not (
      path.name == "__pycache__" or path.name.startswith("__autograph_generated_file"))]


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def flags(data_dir, workdir, **overrides):
  fields = dict(SAME_STEPS, data_dir=data_dir, strategy="auto", **overrides)  # auto: TF_CONFIG
  return ["--config=tiny", f"--workdir={workdir}"] + [
      f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fields.items()]


@pytest.fixture
def processes():
  """Processes a test starts; any still running at its end are killed."""
  started = []
  yield started
  for process in started:
    if process.poll() is None:
      process.kill()
      process.wait()


def start_workers(processes, args, tmp_path, tag, count=2):
  """The worker processes of one cluster on free localhost ports; worker i's TMPDIR is
  tmp_path/tmp_<tag>_<i>."""
  cluster = {"worker": [f"localhost:{port}" for port in free_ports(count)]}
  workers = []
  for index in range(count):
    tmp = tmp_path / f"tmp_{tag}_{index}"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=ROOT, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}))
    log = open(tmp_path / f"worker_{tag}_{index}.log", "w")
    workers.append(subprocess.Popen(
        [sys.executable, "-c", RUN_MAIN_WITHOUT_BLOCKED] + args, cwd=ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT))
  processes.extend(workers)
  return workers


def wait_all(workers, tmp_path, tag, timeout=420):
  deadline = time.time() + timeout
  for index, worker in enumerate(workers):
    worker.wait(max(1, deadline - time.time()))
    log = (tmp_path / f"worker_{tag}_{index}.log").read_text()
    assert worker.returncode == 0, log[-3000:]
  return [(tmp_path / f"worker_{tag}_{i}.log").read_text() for i in range(len(workers))]


def read_history(workdir):
  with open(f"{workdir}/history.csv") as f:
    return list(csv.DictReader(f))


def columns(rows, names=("loss", "mae_px", "val_loss", "val_mae_px")):
  return np.array([[float(row[name]) for name in names] for row in rows])


def test_two_workers_train_like_two_mirrored_replicas(data_dir, tmp_path, processes):
  workdir = tmp_path / "mw"
  workers = start_workers(processes, flags(data_dir, workdir), tmp_path, "run")
  reference = subprocess.run([sys.executable, "-c", f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from facekp.configs import tiny
from facekp.train import loop
config = tiny.get_config()
config.update({SAME_STEPS!r}, data_dir={data_dir!r}, strategy="mirrored")
loop.train_and_evaluate(config, {str(tmp_path / "mirrored")!r})
"""], cwd=ROOT, capture_output=True, text=True, timeout=420)
  logs = wait_all(workers, tmp_path, "run")
  assert reference.returncode == 0, reference.stderr[-3000:]

  assert "CollectiveAllReduceStrategy, 2 replicas" in logs[0]  # MultiWorkerMirroredStrategy
  for name in ("config.json", "train_mean_keypoints.json", "history.csv", "model.keras",
               "checkpoints/best.weights.h5", "checkpoints/backup/latest.weights.h5",
               "tensorboard"):
    assert (workdir / name).exists(), name
  assert not worker_leftovers(tmp_path / "tmp_run_1"), "worker 1 left files behind"
  history = read_history(workdir)
  assert [int(row["epoch"]) for row in history] == [1, 2]
  # The same faces in every global step, so the same gradients; only the order of the float32
  # sums differs (a cross-worker all-reduce against a reduction to one device): measured
  # 1.5e-7 relative after 8 steps, 1e-5 leaves room for other CPUs' summation order.
  np.testing.assert_allclose(columns(history), columns(read_history(tmp_path / "mirrored")),
                             rtol=1e-5, atol=1e-8)


def test_two_workers_killed_mid_epoch_resume_at_the_step(data_dir, tmp_path, processes):
  workdir = tmp_path / "mw"
  args = flags(data_dir, workdir, checkpoint_every_steps=2)
  workers = start_workers(processes, args, tmp_path, "killed")
  metadata = workdir / "checkpoints/backup/training_metadata.json"
  deadline = time.time() + 420
  state = {}
  while time.time() < deadline and all(w.poll() is None for w in workers):
    try:
      state = json.loads(metadata.read_text())
    except (OSError, ValueError):
      pass
    if state.get("epoch", 0) >= 1 and state.get("batch", 0) > 0:
      break
    time.sleep(0.02)
  for worker in workers:
    worker.kill()
    worker.wait()
  assert state.get("batch", 0) > 0, "the run ended before it could be killed mid-epoch"

  logs = wait_all(start_workers(processes, args, tmp_path, "resumed"), tmp_path, "resumed")
  assert "resuming" in logs[0]
  assert [int(row["epoch"]) for row in read_history(workdir)] == [1, 2]
  assert json.loads(metadata.read_text())["step"] == 2 * 4  # no step done twice
  assert (workdir / "model.keras").stat().st_size > 0


def test_a_worker_without_its_peers_stops_naming_tf_config(data_dir, tmp_path):
  cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CONFIG=json.dumps(
      {"cluster": cluster, "task": {"type": "worker", "index": 0}}))
  start = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "facekp.main"] + flags(
          data_dir, tmp_path / "alone", multi_worker_timeout_s=5), cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "TF_CONFIG" in result.stderr and "did not all join within 5 s" in result.stderr
  assert time.time() - start < 60
