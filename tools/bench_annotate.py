r"""Benchmarks annotation: a bare MediaPipe loop vs facekp's annotator with 1 and N workers.

  python -m tools.bench_annotate [--images=DIR] [--workers=N] [--json=FILE]

All three label the same images (the folder's images repeated up to --min_images): the bare
loop calls MediaPipe Face Mesh on `load_rgb` of each file in this process; the annotator runs
the real stage (worker processes, chunks, journal, CSV) through annotate.annotate_folder on
started workers. Prints images/s and the ratios; --json also writes them:
speedup_n_workers = time(1 worker) / time(N workers), overhead = time(1 worker) / time(bare) - 1.
Each figure is the best of --repeats interleaved runs: other work on the machine only slows
runs down.
"""
import json
import os
import tempfile
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
from absl import logging
import mediapipe as mp

from facekp.core import images
from facekp.core import sample
from facekp.data import annotate
from facekp.data import mirror
import tools

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "images", tools.SHARED_FACES, "Folder of face images (default: ../shared/data/aligned128, "
    "or the sample faces in facekp/sample when that is absent).")
flags.DEFINE_integer("workers", 0, "N for the N-worker run (0: one per CPU core).")
flags.DEFINE_integer(
    "min_images", 2000, "Repeat the folder's images until there are at least this many.")
flags.DEFINE_integer("repeats", 2, "Runs per configuration; the fastest counts.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
flags.DEFINE_bool("beam", True, "Also measure the Beam pipeline (when Apache Beam is installed).")


def repeated_folder(source, names, min_images, root):
  """Symlinks `names` into copies rep0/, rep1/, ... under root: distinct names, same pixels."""
  copies = -(-min_images // len(names))
  linked = []
  for copy in range(copies):
    for name in names:
      link = os.path.join(root, f"rep{copy}", name)
      os.makedirs(os.path.dirname(link), exist_ok=True)
      os.symlink(os.path.abspath(os.path.join(source, name)), link)
      linked.append(f"rep{copy}/{name}")
  return linked


def process_cpu_seconds(pids):
  """User + system CPU time of processes (all their threads), from /proc."""
  total = 0
  for pid in pids:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)": state is field 3
    total += int(fields[14 - 3]) + int(fields[15 - 3])  # utime, stime in clock ticks
  return total / os.sysconf("SC_CLK_TCK")


def bare_loop(folder, names):
  """(wall seconds, CPU seconds) of MediaPipe on each image, in this process."""
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
    mesh.process(images.load_rgb(f"{folder}/{names[0]}"))  # first call sets up the graph
    start, cpu_start = time.perf_counter(), time.process_time()
    for name in names:
      mesh.process(images.load_rgb(f"{folder}/{name}"))
    return time.perf_counter() - start, time.process_time() - cpu_start


def annotator(folder, names, schema, workers, scratch):
  """(wall seconds, CPU seconds of this process and the workers, worker start-up seconds) of
  annotate_folder on started workers, into a fresh output folder."""
  with annotate.Pool(workers) as pool:
    started = time.perf_counter()
    pids = pool.start()
    start_seconds = time.perf_counter() - started
    settings = annotate.Settings(folder, tempfile.mkdtemp(dir=scratch), schema.mesh_indices)
    cpu_start = time.process_time() + process_cpu_seconds(pids)
    start = time.perf_counter()
    rows = annotate.annotate_folder(settings, schema, names=names, pool=pool)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() + process_cpu_seconds(pids) - cpu_start
  assert len(rows) == len(names)
  return seconds, cpu_seconds, start_seconds


def beam_annotator(folder, names, schema, workers, scratch):
  """(labelling seconds without the workers' start-up, whole run seconds) of the Beam label
  stage on `workers` FnApiRunner worker processes, or None without Apache Beam."""
  try:
    from facekp.data import beam_runner  # pylint: disable=g-import-not-at-top (optional extra)
  except ImportError as e:
    logging.warning("no Beam row: %s (pip install -e '.[beam]')", e)
    return None
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  settings = annotate.Settings(folder, tempfile.mkdtemp(dir=scratch), schema.mesh_indices)
  pipeline = beam_runner.make_pipeline(beam_runner.parse_options(
      f"direct_num_workers={workers},direct_running_mode=multi_processing"))
  rows = beam_runner.label(pipeline, names, settings)
  _ = rows | beam.combiners.Count.Globally() | beam.Map(_check_count, len(names))
  start = time.perf_counter()
  result = pipeline.run()
  result.wait_until_finish()
  return beam_runner.labelling_seconds(result), time.perf_counter() - start


def _check_count(count, expected):
  if count != expected:
    raise AssertionError(f"Beam labelled {count} images, not {expected}")


def main(argv):
  del argv
  source = os.path.normpath(FLAGS.images)
  if os.path.isdir(source):
    logging.info("benchmark images: %s", source)
  else:
    logging.warning("%s is absent: benchmarking on the sample faces in %s instead", source,
                    sample.SAMPLE_DIR)
    source = sample.SAMPLE_DIR
  workers = FLAGS.workers or len(os.sched_getaffinity(0))
  load_before = os.getloadavg()[0]
  schema = mirror.make_schema()
  with tempfile.TemporaryDirectory() as scratch:
    names = repeated_folder(source, images.list_images(source), FLAGS.min_images, scratch)
    folder = scratch
    runs = []  # interleaved, so that load from other work falls on every configuration alike
    for _ in range(FLAGS.repeats):
      runs.append((bare_loop(folder, names),
                   annotator(folder, names, schema, 1, scratch),
                   annotator(folder, names, schema, workers, scratch),
                   beam_annotator(folder, names, schema, workers, scratch) if FLAGS.beam else
                   None))
  bare, one, many = (min(run[k] for run in runs) for k in range(3))
  beam_runs = [run[3] for run in runs if run[3]]
  bare_cpu, one_cpu = (min(run[k][1] for run in runs) for k in range(2))
  figures = {
      "images_dir": source,
      "images": len(names),
      "cpu_cores": len(os.sched_getaffinity(0)),
      "workers": workers,
      "load_average_before": round(load_before, 2),
      "bare_images_per_s": round(len(names) / bare[0], 1),
      "one_worker_images_per_s": round(len(names) / one[0], 1),
      "n_workers_images_per_s": round(len(names) / many[0], 1),
      "speedup_n_workers": round(one[0] / many[0], 3),
      "overhead": round(one[0] / bare[0] - 1, 4),
      # CPU time is far less disturbed by other work than wall time.
      "bare_cpu_ms_per_image": round(1000 * bare_cpu / len(names), 3),
      "one_worker_cpu_ms_per_image": round(1000 * one_cpu / len(names), 3),
      "overhead_cpu": round(one_cpu / bare_cpu - 1, 4),
      "worker_start_s": {"1": round(one[2], 2), str(workers): round(many[2], 2)},
  }
  if beam_runs:
    beam_seconds, beam_whole = min(beam_runs)
    figures["beam_images_per_s"] = round(len(names) / beam_seconds, 1)
    figures["beam_vs_n_workers"] = round(many[0] / beam_seconds, 3)
    figures["beam_run_s"] = round(beam_whole, 2)
  print(f"{len(names)} images from {figures['images_dir']} on {figures['cpu_cores']} cores "
        f"(load average before: {load_before:.2f})")
  print(f"  bare MediaPipe loop : {figures['bare_images_per_s']:8.1f} images/s")
  print(f"  annotator, 1 worker : {figures['one_worker_images_per_s']:8.1f} images/s  "
        f"overhead {100 * figures['overhead']:+.1f}% (target <= 10%)")
  print(f"  CPU per image: bare {figures['bare_cpu_ms_per_image']:.2f} ms, 1 worker (with the "
        f"main process) {figures['one_worker_cpu_ms_per_image']:.2f} ms: overhead "
        f"{100 * figures['overhead_cpu']:+.1f}%")
  print(f"  annotator, {workers} workers: {figures['n_workers_images_per_s']:8.1f} images/s  "
        f"speed-up {figures['speedup_n_workers']:.2f}x over 1 worker")
  if beam_runs:
    print(f"  Beam FnApiRunner, {workers} worker processes: {figures['beam_images_per_s']:8.1f} "
          f"images/s  {figures['beam_vs_n_workers']:.2f}x the {workers}-worker pool (whole run "
          f"with start-up: {figures['beam_run_s']:.1f} s)")
  print(f"  worker start-up (not in the figures): {figures['worker_start_s']} s")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
