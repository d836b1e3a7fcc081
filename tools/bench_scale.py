r"""How make_tfrecords' cost grows with the work: an FFHQ-sized run on replicated real faces.

  python -m tools.bench_scale [--images=70000] [--source=DIR] [--workers=N] [--json=FILE]

Copies the faces of --source under new names (d000/, d001/, ... in a temporary folder; links
would be listed once) until there are --images of them, runs `python -m tools.make_tfrecords` on
them and prints each stage's time and peak memory (RSS of the run's process tree, sampled).

The annotation rate is compared with the bare MediaPipe loop at like moments: this virtual
machine's speed for the same work drifts by 10-20 % within a minute, so a loop measured only
before and after a long run cannot judge a 5 % gap. Probe processes (the bare loop, one per
worker, Face Mesh built) wait beside the run; from its first labelled chunk to its last, every
--run_seconds the run's processes are suspended (SIGSTOP), the probes label --probe_images each
at once, and the run resumes (SIGCONT). Each tenth of the annotation (its stretches of running)
is set against the probes at the stretches' ends, in images/s and in CPU time per image (all
processes of the run), so a slow or fast spell of the machine falls on both. Paused time is
taken out of every figure. make_tfrecords' log lines are passed on as they come (progress).
Every copy of a face is a duplicate to facekp.data.dedup, so its groups and splits are not a real
dataset's; tools.bench_dedup measures the hash index on distinct faces.
"""
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
import psutil

from facekp.core import images
from facekp.core import journal
from facekp.core import sample
from facekp.data import annotate
import tools

FLAGS = flags.FLAGS

flags.DEFINE_integer("images", 70000, "Images to build the dataset from.")
flags.DEFINE_integer("workers", 0, "Annotation workers (0: one per CPU core).")
flags.DEFINE_string(
    "source", tools.SHARED_FACES, "Folder of real face crops to replicate (default: "
    "../shared/data/aligned128, or the sample faces when that is absent).")
flags.DEFINE_integer(
    "probe_images", 150, "Images per probe process in each measurement of the bare loop.")
flags.DEFINE_float("run_seconds", 5.0, "Seconds the run goes on between two probes.")
flags.DEFINE_integer("parts", 10, "Parts of the annotation reported (tenths).")
flags.DEFINE_integer("chunk_size", 0, "make_tfrecords --chunk_size (0: its default).")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")

_SAMPLE_SECONDS = 0.25
# Listing a process tree reads every process of the machine (~5 ms of CPU, charged to the run and
# not to the bare loop): the run's processes are listed again this often, and at each probe.
_LIST_SECONDS = 2.0


def replicate(source, count, root):
  """`count` names under root, copies of the images of source in turn: distinct names and
  files, the same pixels."""
  names = images.list_images(source)
  copied = []
  for i in range(count):
    if i and i % 10000 == 0:
      print(f"copied {i}/{count} images", file=sys.stderr, flush=True)
    name = f"d{i // len(names):03d}/{names[i % len(names)]}"
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(os.path.join(source, names[i % len(names)]), path)
    copied.append(name)
  return copied


def _probe_process(folder, names, barrier, orders, results):
  import mediapipe as mp  # pylint: disable=g-import-not-at-top
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
    mesh.process(images.load_rgb(f"{folder}/{names[0]}"))  # first call sets up the graph
    results.put("ready")
    while orders.get():
      barrier.wait()
      start, cpu = time.time(), time.process_time()
      for name in names:
        mesh.process(images.load_rgb(f"{folder}/{name}"))
      results.put((start, time.time(), len(names), time.process_time() - cpu))


class BareLoop:
  """The bare MediaPipe loop (load_rgb, FaceMesh.process) in `workers` processes at once,
  started once and idle (blocked on a queue) between measurements."""

  def __init__(self, folder, names, workers, per_process):
    context = multiprocessing.get_context("spawn")
    barrier, self._results = context.Barrier(workers), context.Queue()
    self._orders = [context.Queue() for _ in range(workers)]
    self._processes = [context.Process(target=_probe_process, daemon=True, args=(
        folder, names[k * per_process:(k + 1) * per_process], barrier, self._orders[k],
        self._results)) for k in range(workers)]
    for process in self._processes:
      process.start()
    for _ in self._processes:
      self._results.get()

  def measure(self):
    """(images/s, CPU ms per image) of one pass of every process over its images."""
    for orders in self._orders:
      orders.put(True)
    spans = [self._results.get() for _ in self._processes]
    count = sum(span[2] for span in spans)
    seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
    return count / seconds, 1000 * sum(span[3] for span in spans) / count

  def close(self):
    for orders in self._orders:
      orders.put(False)
    for process in self._processes:
      process.join()


class JournalCounter:
  """Images annotated so far, counted from the stamp lines appended to the annotation journal
  (finer than the log's progress lines, every 10 s)."""

  def __init__(self, path):
    self.path = path
    self.count = 0
    self._read = 0
    self._tail = b""

  def update(self):
    try:
      with open(self.path, "rb") as f:
        f.seek(self._read)
        data = self._tail + f.read()
    except FileNotFoundError:
      return self.count
    self._read += len(data) - len(self._tail)
    self.count += data.count(_STAMP_LINE)
    self._tail = data[-(len(_STAMP_LINE) - 1):]
    return self.count


_STAMP_LINE = b"\n" + journal.STAMP.encode() + b","
_DONE = re.compile(r"done: (\{.*\})")


def _tree(pid):
  root = psutil.Process(pid)
  return [root] + root.children(recursive=True)


def _signal(processes, action):
  for process in processes:
    try:
      getattr(process, action)()
    except psutil.NoSuchProcess:  # ended since it was listed
      pass


def tree_figures(processes):
  """(RSS bytes, CPU seconds) summed over processes; those that ended count nothing."""
  rss = cpu = 0
  for process in processes:
    try:
      times = process.cpu_times()
      rss += process.memory_info().rss
    except psutil.Error:
      continue
    cpu += times.user + times.system
  return rss, cpu


def tree_rss(processes):
  """RSS bytes summed over processes; those that ended count nothing."""
  rss = 0
  for process in processes:
    try:
      rss += process.memory_info().rss
    except psutil.Error:
      continue
  return rss


class Monitor(threading.Thread):
  """Samples the RSS of a run's process tree (listed every _LIST_SECONDS) and, from its first
  labelled chunk to its last, pauses it every `run_seconds` to measure the bare loop."""

  def __init__(self, pid, journal_path, total, run_seconds, bare_loop):
    super().__init__(daemon=True)
    self.pid, self.total, self.run_seconds, self.bare_loop = pid, total, run_seconds, bare_loop
    self.journal = JournalCounter(journal_path)
    self.samples = []  # (time, RSS bytes of the tree)
    # (time paused, time resumed, images annotated, CPU seconds of the tree, bare loop figures)
    self.probes = []
    self._stopping = threading.Event()

  def run(self):
    tree, listed = [], 0.0
    while not self._stopping.wait(_SAMPLE_SECONDS):
      try:
        if time.time() - listed > _LIST_SECONDS:
          tree, listed = _tree(self.pid), time.time()
      except psutil.Error:  # the run ended
        continue
      self.samples.append((time.time(), tree_rss(tree)))
      count = self.journal.update()
      if not self.probes:
        due = count > 0
      else:
        due = self.probes[-1][2] < self.total and (
            count >= self.total or time.time() > self.probes[-1][1] + self.run_seconds)
      if due:
        try:
          tree, listed = _tree(self.pid), time.time()  # every process of the run must stop
        except psutil.Error:
          continue
        self._probe(tree)

  def _probe(self, tree):
    try:
      _signal(tree, "suspend")
      paused = time.time()
      count, cpu = self.journal.update(), tree_figures(tree)[1]
      bare = self.bare_loop.measure()
    finally:  # never leave the run stopped
      _signal(reversed(tree), "resume")
    self.probes.append((paused, time.time(), count, cpu, bare))

  def stop(self):
    self._stopping.set()
    self.join()

  def paused_within(self, start, end):
    return sum(max(0.0, min(end, t1) - max(start, t0)) for t0, t1, *_ in self.probes)

  def peak(self, start, end):
    return max((rss for t, rss in self.samples if start <= t <= end), default=0)

  def parts(self, parts):
    """The stretches of running between two probes, gathered into `parts` by the images done
    when they began: per part (images, images/s, CPU ms per image, and the bare loop's images/s
    and CPU ms per image at the stretches' ends, weighted by their running time)."""
    gathered = [[0, 0.0, 0.0, 0.0, 0.0] for _ in range(parts)]
    for (_, resumed, n0, cpu0, bare0), (paused, _, n1, cpu1, bare1) in zip(
        self.probes, self.probes[1:]):
      part = gathered[min(parts - 1, n0 * parts // self.total)]
      seconds = paused - resumed
      part[0] += n1 - n0
      part[1] += seconds
      part[2] += cpu1 - cpu0
      part[3] += seconds * (bare0[0] + bare1[0]) / 2
      part[4] += seconds * (bare0[1] + bare1[1]) / 2
    return [(n, n / seconds, 1000 * cpu / n, bare / seconds, bare_cpu / seconds)
            for n, seconds, cpu, bare, bare_cpu in gathered if n]


def run_make_tfrecords(folder, out, names, workers, chunk_size, run_seconds, bare_loop):
  """(summary, time the summary was logged, the Monitor) of a make_tfrecords run, its log
  passed on as it comes."""
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={folder}", f"--out={out}",
             f"--workers={workers}", f"--chunk_size={chunk_size}"]
  summary, done_time = None, None
  with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
    monitor = Monitor(process.pid, os.path.join(out, annotate.JOURNAL), len(names), run_seconds,
                      bare_loop)
    monitor.start()
    for line in process.stderr:
      sys.stderr.write(line)
      if match := _DONE.search(line):
        summary, done_time = json.loads(match.group(1)), time.time()
  monitor.stop()
  if process.returncode or summary is None:
    raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}")
  return summary, done_time, monitor


def stage_figures(summary, end, monitor):
  """[(stage, seconds without pauses, peak RSS bytes)] from the summary's *_s timings (back
  from `end`)."""
  stages, t = [], end
  for key, seconds in reversed(list(summary.items())):
    if key.endswith("_s"):
      start = t - seconds
      stages.append((key[:-2], seconds - monitor.paused_within(start, t),
                     monitor.peak(start - _SAMPLE_SECONDS, t)))
      t = start
  return stages[::-1]


def main(argv):
  del argv
  source = FLAGS.source if os.path.isdir(FLAGS.source) else sample.SAMPLE_DIR
  workers = FLAGS.workers or len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as scratch:
    folder = os.path.join(scratch, "images")
    names = replicate(source, FLAGS.images, folder)
    bare_loop = BareLoop(folder, names[-workers * FLAGS.probe_images:], workers,
                         FLAGS.probe_images)
    load_before = os.getloadavg()[0]
    start = time.time()
    try:
      summary, end, monitor = run_make_tfrecords(
          folder, os.path.join(scratch, "out"), names, workers, FLAGS.chunk_size,
          FLAGS.run_seconds, bare_loop)
    finally:
      bare_loop.close()
    total_seconds = time.time() - start - monitor.paused_within(start, time.time())
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
  stages = stage_figures(summary, end, monitor)
  parts = monitor.parts(FLAGS.parts)
  bare_rates = [probe[4][0] for probe in monitor.probes]
  annotate_s = dict((stage, seconds) for stage, seconds, _ in stages)["annotate"]
  other_s = total_seconds - sum(seconds for _, seconds, _ in stages)
  figures = {
      "images": len(names), "source": source, "workers": workers,
      "cpu_cores": len(os.sched_getaffinity(0)), "load_average": load,
      "total_s": round(total_seconds, 1),
      "paused_s": round(monitor.paused_within(0, float("inf")), 1),
      "peak_rss_mb": round(monitor.peak(start, time.time()) / 2**20),
      "stages": [{"stage": s, "seconds": round(sec, 1), "peak_rss_mb": round(rss / 2**20)}
                 for s, sec, rss in stages],
      "other_s": round(other_s, 1),
      "total_over_annotate": round(total_seconds / annotate_s, 3),
      "bare_loop_x_workers_images_per_s": [round(rate, 1) for rate in bare_rates],
      "annotate_images_per_s": round(len(names) / annotate_s, 1),
      "parts": [{"images": n, "images_per_s": round(rate, 1), "cpu_ms_per_image": round(cpu, 3),
                 "bare_images_per_s": round(bare, 1), "bare_cpu_ms_per_image": round(bare_cpu, 3),
                 "vs_bare": round(rate / bare, 3), "cpu_vs_bare": round(bare_cpu / cpu, 3)}
                for n, rate, cpu, bare, bare_cpu in parts],
  }
  print(f"make_tfrecords on {len(names)} images ({source} replicated), {workers} workers, "
        f"{figures['cpu_cores']} cores, load average {load[0]} before, {load[1]} after: "
        f"{total_seconds:.1f} s (without {figures['paused_s']} s paused for the probes), peak "
        f"RSS {figures['peak_rss_mb']} MB (sum over processes)")
  for stage in figures["stages"]:
    print(f"  {stage['stage']:<10} {stage['seconds']:8.1f} s  peak RSS "
          f"{stage['peak_rss_mb']:6d} MB")
  print(f"  {'other':<10} {other_s:8.1f} s  (the command's start and imports before its first "
        "stage, its exit after the last)")
  print(f"  all / annotate: {figures['total_over_annotate']:.3f}")
  whole = figures["annotate_images_per_s"] / (sum(bare_rates) / len(bare_rates))
  figures["whole_stage_vs_bare"] = round(whole, 3)
  print(f"  annotation, whole stage with start-up: {figures['annotate_images_per_s']:.1f} "
        f"images/s = {whole:.3f} of the bare loop x {workers} (mean of {len(bare_rates)} probes)")
  if parts:
    _, rate, _, bare, _ = monitor.parts(1)[0]
    figures["vs_bare"] = round(rate / bare, 3)
    print(f"  annotation from its first chunk to its last: {rate:.1f} images/s = "
          f"{rate / bare:.3f} of the bare loop x {workers} probed beside it")
  print(f"  by tenth, against the bare loop x {workers} probed at the ends of its stretches:")
  print("    part     images  images/s  bare  ratio   CPU ms/image  bare  bare/this")
  for k, part in enumerate(figures["parts"]):
    print(f"    {k + 1:>2}/{len(parts):<3} {part['images']:8d} {part['images_per_s']:9.1f} "
          f"{part['bare_images_per_s']:5.0f} {part['vs_bare']:6.3f} "
          f"{part['cpu_ms_per_image']:10.2f} {part['bare_cpu_ms_per_image']:7.2f} "
          f"{part['cpu_vs_bare']:8.3f}")
  if parts:
    ratios = [part["vs_bare"] for part in figures["parts"]]
    figures["vs_bare_range"] = [min(ratios), max(ratios)]
    print(f"  from start to end: {min(ratios):.3f} to {max(ratios):.3f} of the bare loop x "
          f"{workers} (first tenth {ratios[0]:.3f}, last {ratios[-1]:.3f})")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
