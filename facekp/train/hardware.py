"""The hardware a run trains on: the tf.distribute strategy, the precision, XLA, chief or worker.

Several hosts (strategy "multi_worker", or "auto" with TF_CONFIG naming several workers) use
MultiWorkerMirroredStrategy. It must be constructed before anything else touches TensorFlow's
context (listing devices included: "Collective ops must be configured at program startup"),
so create_strategy builds it first. Worker 0 (or the "chief" task) writes the workdir; every
other worker writes its identical state into a temporary folder that it deletes at the end.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

from absl import logging
import tensorflow as tf

from facekp.core import log_format
from facekp.core import stderr_filter
from facekp.train import config_rules
from facekp.train import keras_internals



def tf_config():
  """TF_CONFIG as a dict ({} when unset); a clear error when it is not JSON."""
  text = os.environ.get("TF_CONFIG", "")
  if not text.strip():
    return {}
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {text[:200]}") from None
  shapes = {"": config} if not isinstance(config, dict) else {
      f".{key}": config[key] for key in ("cluster", "task") if key in config}
  for where, value in shapes.items():
    if not isinstance(value, dict):
      raise ValueError(f"TF_CONFIG{where} must be a JSON object, e.g. "
                       '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                       f'"task": {{"type": "worker", "index": 0}}}}; got {text[:200]}')
  return config


def num_workers():
  cluster = tf_config().get("cluster", {})
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief():
  """Whether this process writes the workdir: no cluster, the "chief" task, or worker 0 of a
  cluster without a chief."""
  config = tf_config()
  task = config.get("task", {})
  if not task or num_workers() <= 1:
    return True
  if task.get("type") == "chief":
    return True
  return (task.get("type") == "worker" and int(task.get("index", 0)) == 0
          and not config.get("cluster", {}).get("chief"))


# A separate process, since TensorFlow's wait for the other workers holds the interpreter.
_WATCHDOG = """
import os, signal, sys, time
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(seconds)
sys.stderr.write(message)
sys.stderr.flush()
os.kill(pid, signal.SIGTERM)
time.sleep(10)
os.kill(pid, signal.SIGKILL)
"""


def _watchdog(timeout_s):
  """A process that stops this one, with a message naming TF_CONFIG, unless killed first."""
  message = log_format.line(
      f"error: the workers named in TF_CONFIG did not all join within {timeout_s:.0f} s "
      f"(TF_CONFIG={os.environ.get('TF_CONFIG', '')}). Start every worker of the cluster with "
      "the same cluster and its own task index, check that their addresses are reachable, or "
      "raise --config.multi_worker_timeout_s.") + "\n"
  return subprocess.Popen(
      [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_s), message],
      stdin=subprocess.DEVNULL, stderr=stderr_filter.unfiltered_stderr())


def _multi_worker_strategy(timeout_s):
  """MultiWorkerMirroredStrategy once every worker has joined, within `timeout_s` seconds."""
  if num_workers() < 1:
    raise ValueError("strategy=multi_worker needs TF_CONFIG naming the cluster, e.g. "
                     'TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')
  watchdog = _watchdog(timeout_s)
  # The watchdog's SIGTERM ends the process at once, as it always did (facekp.core.cli's handler
  # would wait for TensorFlow to give the interpreter back, then say "interrupted").
  in_main_thread = threading.current_thread() is threading.main_thread()
  handler = signal.signal(signal.SIGTERM, signal.SIG_DFL) if in_main_thread else None
  try:
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=timeout_s))
    sum_over_replicas(strategy, 1.0)  # returns once every worker is there
  finally:
    watchdog.kill()
    watchdog.wait()
    if handler is not None:
      signal.signal(signal.SIGTERM, handler)
  return strategy


def create_strategy(name, tpu="", multi_worker_timeout_s=300):
  """The tf.distribute strategy `name`; "mirrored" uses every local GPU, else every CPU device;
  "auto": multi_worker when TF_CONFIG names several workers, else mirrored on several GPUs."""
  if name == "auto" and num_workers() > 1:
    name = "multi_worker"
  if name == "multi_worker":  # before anything initialises the context
    return _multi_worker_strategy(multi_worker_timeout_s)
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device"
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
  if name == "mirrored":
    if gpus:
      return tf.distribute.MirroredStrategy(gpus)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
  raise ValueError(f"strategy={name!r}: choose one of {config_rules.STRATEGIES}")


def sum_over_replicas(strategy, value):
  """The sum over every replica of every worker of `value` (a number; also a barrier)."""
  return float(strategy.reduce(
      "SUM", strategy.run(lambda: tf.constant(float(value))), axis=None))


def check_same_on_every_worker(strategy, value, what):
  """Raises unless every worker holds the same number `value`."""
  if sum_over_replicas(strategy, value) != strategy.num_replicas_in_sync * float(value):
    raise RuntimeError(
        f"the workers disagree on {what} (this one: {value}): they must all read the same "
        "--workdir (a shared file system or object storage) and run the same command")


def is_multi_worker(strategy):
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
      keras_internals.in_multi_worker_mode(strategy))


def resolve_precision(precision, strategy):
  """"auto": mixed_float16 on GPUs, mixed_bfloat16 on TPUs and CPUs."""
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


class WriterDir:
  """The folder this process writes: the workdir on the chief, else a temporary folder (the
  other workers' state is identical to the chief's; TensorFlow needs them to write it too)."""

  def __init__(self, workdir):
    self.chief = is_chief()
    self.path = str(workdir) if self.chief else tempfile.mkdtemp(prefix="facekp-worker-")

  def __enter__(self):
    if not self.chief:
      logging.info("worker state goes to %s (deleted at the end)", self.path)
    return self

  def __exit__(self, *exc):
    if not self.chief:
      shutil.rmtree(self.path, ignore_errors=True)
