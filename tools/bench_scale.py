r"""How make_tfrecords' cost grows with the work: an FFHQ-sized run on replicated real faces.

  python -m tools.bench_scale [--images=70000] [--source=DIR] [--workers=N] [--json=FILE]

Copies the faces of --source under new names (d000/, d001/, ... in a temporary folder; links
would be listed once) until there are --images of them, runs `python -m tools.make_tfrecords` on them and
prints each stage's time and peak memory (RSS of this process and its children, sampled),
and the annotation rate over the first and the last tenth of the images beside the bare
MediaPipe loop run in --workers processes at once, measured in the same run before (printed
first) and after. make_tfrecords' log lines are passed on as they come (progress).
Other work on the machine slows both; the CPU time per image (all processes of the run against
the bare loop's) is the figure it disturbs least. Every copy of a face is a duplicate to
facekp.dedup, so its groups and splits are not a real dataset's; tools.bench_dedup measures
the hash index on distinct faces.
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

from facekp import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
import psutil

from facekp import annotate
from facekp import images
from facekp import journal
from facekp import mirror
import tools

FLAGS = flags.FLAGS

flags.DEFINE_integer("images", 70000, "Images to build the dataset from.")
flags.DEFINE_string(
    "source", tools.SHARED_FACES, "Folder of real face crops to replicate (default: "
    "../shared/data/aligned128, or the sample faces when that is absent).")
flags.DEFINE_integer("workers", 0, "Annotation workers (0: one per CPU core).")
flags.DEFINE_integer(
    "bare_images", 1000, "Images per process for each measurement of the bare loop.")
flags.DEFINE_integer("chunk_size", 16, "make_tfrecords --chunk_size.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")

_SAMPLE_SECONDS = 0.25


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


class MemorySampler(threading.Thread):
  """Samples the RSS and CPU time of a process and all its descendants, and the images its
  annotation journal holds, until stopped."""

  def __init__(self, pid, journal):
    super().__init__(daemon=True)
    self.pid = pid
    self.journal = JournalCounter(journal)
    self.samples = []  # (time, RSS bytes, CPU seconds of the tree, CPU seconds of the root)
    self.annotated = []  # (time, images in the journal) whenever that changes
    self._stopping = threading.Event()

  def run(self):
    root = psutil.Process(self.pid)
    while not self._stopping.wait(_SAMPLE_SECONDS):
      count = self.journal.update()
      if count and (not self.annotated or count != self.annotated[-1][1]):
        self.annotated.append((time.time(), count))
      rss = cpu = root_cpu = 0
      try:
        tree = [root] + root.children(recursive=True)
      except psutil.Error:  # the process ended
        continue
      for process in tree:
        try:
          times = process.cpu_times()
          rss += process.memory_info().rss
        except psutil.Error:  # ended between listing and reading
          continue
        cpu += times.user + times.system
        root_cpu = root_cpu or times.user + times.system
      self.samples.append((time.time(), rss, cpu, root_cpu))

  def stop(self):
    self._stopping.set()
    self.join()

  def peak(self, start, end):
    return max((rss for t, rss, _, _ in self.samples if start <= t <= end), default=0)

  def cpu_at(self, when):
    """(CPU seconds of the tree, of the root) at the sample nearest to `when`."""
    return min(self.samples, key=lambda sample: abs(sample[0] - when))[2:]


_STAMP_LINE = b"\n" + journal.STAMP.encode() + b","
_DONE = re.compile(r"done: (\{.*\})")


def run_make_tfrecords(folder, out, workers, chunk_size):
  """(summary, time the summary was logged, [(time, images annotated)], memory samples) of a
  make_tfrecords run, its log passed on as it comes."""
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={folder}", f"--out={out}",
             f"--workers={workers}", f"--chunk_size={chunk_size}"]
  summary, done_time = None, None
  with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
    sampler = MemorySampler(process.pid, os.path.join(out, annotate.JOURNAL))
    sampler.start()
    for line in process.stderr:
      sys.stderr.write(line)
      if match := _DONE.search(line):
        summary, done_time = json.loads(match.group(1)), time.time()
  sampler.stop()
  if process.returncode or summary is None:
    raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}")
  return summary, done_time, sampler.annotated, sampler


def window(points, first, last, sampler):
  """(images/s, CPU ms per image of all processes, of the main one) between the progress
  points nearest to fractions `first` and `last` of the images."""
  if len(points) < 2:
    return None
  total = points[-1][1]
  pick = lambda f: min(points, key=lambda p: abs(p[1] - f * total))
  (t0, n0), (t1, n1) = pick(first), pick(last)
  if (t0, n0) == (t1, n1):
    (t0, n0), (t1, n1) = (points[0], points[1]) if first < 0.5 else (points[-2], points[-1])
  (cpu0, main0), (cpu1, main1) = sampler.cpu_at(t0), sampler.cpu_at(t1)
  return ((n1 - n0) / (t1 - t0), 1000 * (cpu1 - cpu0) / (n1 - n0),
          1000 * (main1 - main0) / (n1 - n0))


def _bare_process(folder, names, barrier, results):
  import mediapipe as mp  # pylint: disable=g-import-not-at-top
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
    mesh.process(images.load_rgb(f"{folder}/{names[0]}"))
    barrier.wait()
    start, cpu = time.time(), time.process_time()
    for name in names:
      mesh.process(images.load_rgb(f"{folder}/{name}"))
    results.put((start, time.time(), len(names), time.process_time() - cpu))


def bare_loop_times_workers(folder, names, workers, per_process):
  """(images/s, CPU ms per image) of the bare MediaPipe loop in `workers` processes at once."""
  context = multiprocessing.get_context("spawn")
  barrier, results = context.Barrier(workers), context.Queue()
  processes = [context.Process(target=_bare_process, args=(
      folder, names[k * per_process:(k + 1) * per_process], barrier, results))
               for k in range(workers)]
  for process in processes:
    process.start()
  spans = [results.get() for _ in processes]
  for process in processes:
    process.join()
  count = sum(span[2] for span in spans)
  seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
  return count / seconds, 1000 * sum(span[3] for span in spans) / count


def stage_figures(summary, end, sampler):
  """[(stage, seconds, peak RSS bytes)] from the summary's *_s timings (back from `end`)."""
  stages, t = [], end
  for key, seconds in reversed(list(summary.items())):
    if key.endswith("_s"):
      stages.append((key[:-2], seconds, sampler.peak(t - seconds - _SAMPLE_SECONDS, t)))
      t -= seconds
  return stages[::-1]


def main(argv):
  del argv
  source = FLAGS.source if os.path.isdir(FLAGS.source) else mirror.SAMPLE_DIR
  workers = FLAGS.workers or len(os.sched_getaffinity(0))
  with tempfile.TemporaryDirectory() as scratch:
    folder = os.path.join(scratch, "images")
    names = replicate(source, FLAGS.images, folder)
    bare_names = names[-workers * FLAGS.bare_images:]
    load_before = os.getloadavg()[0]
    bare_before = bare_loop_times_workers(folder, bare_names, workers, FLAGS.bare_images)
    print(f"bare MediaPipe loop x {workers} processes before the run: {bare_before[0]:.1f} "
          f"images/s, {bare_before[1]:.2f} CPU ms per image", flush=True)
    start = time.time()
    summary, end, points, sampler = run_make_tfrecords(
        folder, os.path.join(scratch, "out"), workers, FLAGS.chunk_size)
    total_seconds = time.time() - start
    bare_after = bare_loop_times_workers(folder, bare_names, workers, FLAGS.bare_images)
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
  bare = (bare_before[0] + bare_after[0]) / 2
  bare_cpu = (bare_before[1] + bare_after[1]) / 2
  figures = {
      "images": len(names), "source": source, "workers": workers,
      "cpu_cores": len(os.sched_getaffinity(0)), "load_average": load,
      "total_s": round(total_seconds, 1),
      "peak_rss_mb": round(sampler.peak(start, time.time()) / 2**20),
      "stages": [{"stage": s, "seconds": sec, "peak_rss_mb": round(rss / 2**20)}
                 for s, sec, rss in stage_figures(summary, end, sampler)],
      "bare_loop_x_workers_images_per_s": [round(bare_before[0], 1), round(bare_after[0], 1)],
      "bare_cpu_ms_per_image": round(bare_cpu, 3),
      "annotate_images_per_s": round(len(names) / summary["annotate_s"], 1),
  }
  print(f"make_tfrecords on {len(names)} images ({source} replicated), {workers} workers, "
        f"{figures['cpu_cores']} cores, load average {load[0]} before, {load[1]} after: "
        f"{total_seconds:.1f} s, peak RSS {figures['peak_rss_mb']} MB (sum over processes)")
  for stage in figures["stages"]:
    print(f"  {stage['stage']:<10} {stage['seconds']:8.1f} s  peak RSS "
          f"{stage['peak_rss_mb']:6d} MB")
  print(f"  bare MediaPipe loop x {workers} processes: {bare_before[0]:.1f} images/s before, "
        f"{bare_after[0]:.1f} after; {bare_cpu:.2f} CPU ms per image")
  print(f"  annotation, whole stage : {figures['annotate_images_per_s']:8.1f} images/s = "
        f"{figures['annotate_images_per_s'] / bare:.2f} of the bare loop x workers (with start-up)")
  for label, key, first, last in (("first tenth", "start", 0.0, 0.1),
                                  ("last tenth", "end", 0.9, 1.0)):
    figures[f"annotate_{key}"] = found = window(points, first, last, sampler)
    if found:
      rate, cpu, main_cpu = found
      figures[f"annotate_{key}_vs_bare"] = round(rate / bare, 3)
      print(f"  annotation, {label:<12}: {rate:8.1f} images/s = {rate / bare:.2f} of the bare "
            f"loop x workers; CPU {cpu:.2f} ms per image (bare / this = {bare_cpu / cpu:.2f}), "
            f"main process {main_cpu:.3f} ms")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
