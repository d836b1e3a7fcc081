"""Worker processes that die with their parent, from a fork server.

Workers come from a fork server that imports only the modules named in `preload`: forking a
process that already runs TensorFlow threads is unsafe, and spawning re-imports TensorFlow per
worker. A worker whose parent run dies (SIGKILL, SIGTERM) exits within a second: it asks the
kernel for SIGKILL when the fork server goes (PR_SET_PDEATHSIG), and a watchdog thread polls
the run's process, so no worker, fork server or resource tracker outlives the run. A worker's
log lines read as those of its run (`facekp make_tfrecords: warning: ...`).
"""
import concurrent.futures
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import threading
import time

from facekp.core import log_format

_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5
_MAP_BATCH = 256


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is a dead run
  except OSError:
    return True


def _watch(run_pid):
  while _alive(run_pid):
    time.sleep(_WATCH_SECONDS)
  os._exit(1)


def report_pid():
  time.sleep(0.2)  # long enough that every worker gets one of these tasks, so all start
  return os.getpid()


def die_with(run_pid, log_settings=None):
  """Makes this (worker) process end when process `run_pid` ends (a pool initializer), and,
  given log_format.worker_settings() of that process, writes its log lines as that one does."""
  if log_settings is not None:
    log_format.set_up_worker(log_settings)
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):  # not Linux: the watchdog alone
    pass
  threading.Thread(target=_watch, args=(run_pid,), daemon=True).start()


def start_fork_server(preload=()):
  """Starts the fork server that Pool's workers come from, importing the modules named in
  `preload`, and returns at once: it imports them (seconds: TensorFlow, MediaPipe) while this
  process goes on, so that a Pool's first workers start sooner. Does nothing when it runs."""
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload([__name__, *preload])
  multiprocessing.forkserver.ensure_running()


class Pool:
  """Worker processes that keep their state (e.g. a FaceMesh) across tasks.

  `preload`: modules the fork server imports (those of the task functions); `warm_up`: an
  importable function that `start` runs once per worker, returning the worker's pid (it takes
  long enough that every worker gets one).
  """

  def __init__(self, workers=None, preload=(), warm_up=None):
    warm_up = warm_up or report_pid
    self.workers = workers or len(os.sched_getaffinity(0))
    self.started = False  # workers start on first use, each in seconds (TF and MediaPipe)
    self._warm_up = warm_up
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *preload])
    self._executor = concurrent.futures.ProcessPoolExecutor(
        self.workers, mp_context=context, initializer=die_with,
        initargs=(os.getpid(), log_format.worker_settings()))

  def start(self):
    """Starts every worker now (else on demand), for timing the steady state. Returns the
    workers' process ids."""
    self.started = True
    futures = [self._executor.submit(self._warm_up) for _ in range(self.workers)]
    return sorted({future.result() for future in futures})

  def imap_unordered(self, function, *args_of_tasks):
    """Yields function(*args) of each task as it finishes, keeping a few tasks per worker
    queued (`args_of_tasks` may be a long generator)."""
    self.started = True
    tasks = iter(zip(*args_of_tasks))
    pending = set()
    while True:
      while len(pending) < 2 * self.workers:
        args = next(tasks, None)
        if args is None:
          break
        pending.add(self._executor.submit(function, *args))
      if not pending:
        return
      finished, pending = concurrent.futures.wait(
          pending, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        yield future.result()

  def map(self, function, *iterables):
    """Like the builtin map, in the workers (function must be importable there), in batches
    of up to _MAP_BATCH items (one message per item cost about what a small image does)."""
    self.started = True
    items = list(zip(*iterables))
    batch = max(1, min(_MAP_BATCH, len(items) // (4 * self.workers)))
    return self._executor.map(function, *zip(*items), chunksize=batch) if items else iter(())

  def close(self):
    self._executor.shutdown(cancel_futures=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
