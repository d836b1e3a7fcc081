"""Runs every benchmark and prints one table of images/s and ratios against the seed-style
baselines measured in the same run, with the machine it ran on.

  python -m tools.bench_all [--json=FILE] [--quick]

Each benchmark runs in its own process (bench_train splits the CPU into logical devices) and
writes its figures with --json; this script gathers them.
"""
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
flags.DEFINE_bool("quick", False, "Smaller runs, every ratio but the seed-style fit's, in under 3 "
                  "minutes on 2 cores (noisier figures: quote the full run's).")

_QUICK_ARGS = {
    "bench_annotate": ["--min_images=64", "--repeats=1", "--nobeam"],
    "bench_pipeline": ["--epoch_size=3000"],
    "bench_scale": ["--images=1200", "--run_seconds=2"],
    "bench_train": ["--steps=3", "--backbones=mobilenet_v2", "--xla=off", "--replicas=1",
                    "--precisions=float32", "--noseed"],
}
BENCHMARKS = tuple(_QUICK_ARGS)


def run_benchmark(name, scratch):
  path = os.path.join(scratch, f"{name}.json")
  args = [sys.executable, "-m", f"tools.{name}", f"--json={path}"]
  if FLAGS.quick:
    args += _QUICK_ARGS[name]
  print(f"=== {' '.join(args[1:])}", flush=True)
  start = time.perf_counter()
  if subprocess.run(args, check=False).returncode:
    cli.fail(f"error: tools.{name} failed (its output is above)")
  print(f"=== tools.{name}: {time.perf_counter() - start:.0f} s", flush=True)
  with open(path) as f:
    return json.load(f)


def _train_rate(train, backbone="mobilenet_v2"):
  """images/s of facekp's float32 train step, XLA off, 1 replica (augmentation inside)."""
  for s in train["settings"]:
    if (s["way"], s["backbone"], s["precision"], s["xla"], s["replicas"]) == (
        "facekp", backbone, "float32", False, 1):
      return s["images_per_s"]
  return math.nan


def table_rows(figures):
  """(stage, setting, images/s, baseline images/s, ratio, goal) for every measured setting; the
  ratio is images/s over the baseline's, except where a row's goal says otherwise (issue 23's
  figures: costs as a share)."""
  a = figures["bench_annotate"]
  yield ("annotate", "bare MediaPipe loop (baseline)", a["bare_images_per_s"], None, None, "")
  yield ("annotate", "facekp, 1 worker", a["one_worker_images_per_s"], a["bare_images_per_s"],
         1 / (1 + a["overhead"]), "")
  yield ("annotate", f"facekp, {a['workers']} workers", a["n_workers_images_per_s"],
         a["one_worker_images_per_s"], a["speedup_n_workers"], "")
  if "beam_images_per_s" in a:  # Apache Beam installed
    yield ("annotate", f"Beam FnApiRunner, {a['workers']} worker processes",
           a["beam_images_per_s"], a["n_workers_images_per_s"], a["beam_vs_n_workers"], "")
  b = figures["bench_scale"]
  bare = sum(b["bare_loop_x_workers_images_per_s"]) / len(b["bare_loop_x_workers_images_per_s"])
  yield ("build", f"bare loop x {b['workers']} workers (baseline)", bare, None, None, "")
  yield ("build", f"annotation stage, {b['images']} images", b["annotate_images_per_s"], bare,
         b["whole_stage_vs_bare"], ">= 0.95 at 70,000")
  yield ("build", "whole build (all stages / annotation)", b["images"] / b["total_s"],
         b["annotate_images_per_s"], b["total_over_annotate"], "<= 1.25 at 70,000")
  p = figures["bench_pipeline"]
  seq = p["sequence_images_per_s"]
  yield ("pipeline", "seed-style PyDataset (baseline)", seq, None, None, "")
  yield ("pipeline", "tf.data, cold first epoch (PNG)", p["cold_images_per_s"], seq,
         p["cold_vs_sequence"], ">= 2.0")
  yield ("pipeline", "  the same against tf.io.decode_png alone", p["cold_images_per_s"],
         p["decode_bound_images_per_s"], p["cold_vs_decode_bound"], "(a bound)")
  yield ("pipeline", "tf.data, cold first epoch (stored pixels)", p["cold_pixels_images_per_s"],
         seq, p["cold_pixels_vs_sequence"], "")
  yield ("pipeline", "tf.data, warm cache", p["warm_images_per_s"], seq, p["warm_vs_sequence"],
         ">= 100,000/s")
  yield ("pipeline", "  the same against the batch copy alone", p["warm_images_per_s"],
         p["copy_bound_images_per_s"], p["warm_vs_copy_bound"], "(a bound)")
  costs = p["augment_ms_per_batch"]
  for mode in ("graph", "xla"):  # ratio: per-image cost at batch 256 / at batch 32
    yield ("augment", f"batch 256 vs batch 32, {mode}", 256 / costs[f"256_{mode}"] * 1000,
           32 / costs[f"32_{mode}"] * 1000, p[f"augment_per_image_256_vs_32_{mode}"], "<= 1.2")
  t = figures["bench_train"]
  train_rate = _train_rate(t)  # ratio: augmentation's ms / the whole step's ms
  yield ("augment", f"in a mobilenet_v2 train step, batch {t['batch_size']}",
         32 / costs["32_graph"] * 1000, train_rate,
         costs["32_graph"] / (t["batch_size"] / train_rate * 1000), "<= 0.05")
  seed_rates = {s["backbone"]: s["images_per_s"] for s in t["settings"] if s["way"] == "seed"}
  for s in t["settings"]:
    if s["way"] == "seed":
      yield ("train", f"{s['backbone']} seed-style fit (baseline)", s["images_per_s"], None, None,
             "")
    else:
      setting = (f"{s['backbone']} facekp {s['precision']}, XLA {'on' if s['xla'] else 'off'}, "
                 f"{s['replicas']} replica{'s' if s['replicas'] > 1 else ''}")
      yield ("train", setting, s["images_per_s"], seed_rates.get(s["backbone"], math.nan),
             s["ratio"], "")


def _number(value, form):
  return "" if value is None or math.isnan(value) else format(value, form)


def print_table(figures):
  print(f"\nfacekp benchmarks on {figures['machine']}")
  print(f"{'stage':<9} {'setting':<46} {'images/s':>10} {'baseline':>10} {'ratio':>7} goal")
  for stage, setting, rate, baseline, ratio, goal in table_rows(figures):
    rate = "failed" if math.isnan(rate) else f"{rate:,.1f}"  # bench_train says why
    ratio = _number(ratio, ".2f")
    print(f"{stage:<9} {setting:<46} {rate:>10} {_number(baseline, ',.1f'):>10} "
          f"{ratio + 'x' if ratio else '':>7} {goal}")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as scratch:
    figures = {name: run_benchmark(name, scratch) for name in BENCHMARKS}
  machine = (f"{platform.node()}: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores, {figures['bench_train']['device']}, "
             f"TensorFlow {figures['bench_train']['tensorflow']}")
  figures["machine"] = machine
  print_table(figures)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
