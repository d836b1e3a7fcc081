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

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
flags.DEFINE_bool("quick", False, "Smaller runs (a smoke test, not figures to quote).")

_QUICK_ARGS = {
    "bench_annotate": ["--min_images=64", "--repeats=1"],
    "bench_pipeline": ["--epoch_size=2000"],
    "bench_train": ["--steps=2", "--backbones=mobilenet_v2", "--xla=off"],
}


def run_benchmark(name, scratch):
  path = os.path.join(scratch, f"{name}.json")
  args = [sys.executable, "-m", f"tools.{name}", f"--json={path}"]
  if FLAGS.quick:
    args += _QUICK_ARGS[name]
  print(f"=== {' '.join(args[1:])}", flush=True)
  if subprocess.run(args, check=False).returncode:
    cli.fail(f"error: tools.{name} failed (its output is above)")
  with open(path) as f:
    return json.load(f)


def table_rows(figures):
  """(benchmark, setting, images/s, baseline images/s, ratio) for every measured setting."""
  a = figures["bench_annotate"]
  yield ("annotate", "bare MediaPipe loop (baseline)", a["bare_images_per_s"], None, None)
  yield ("annotate", "facekp, 1 worker", a["one_worker_images_per_s"], a["bare_images_per_s"],
         1 / (1 + a["overhead"]))
  yield ("annotate", f"facekp, {a['workers']} workers", a["n_workers_images_per_s"],
         a["one_worker_images_per_s"], a["speedup_n_workers"])
  if "beam_images_per_s" in a:  # Apache Beam installed
    yield ("annotate", f"Beam FnApiRunner, {a['workers']} worker processes",
           a["beam_images_per_s"], a["n_workers_images_per_s"], a["beam_vs_n_workers"])
  p = figures["bench_pipeline"]
  seq = p["sequence_images_per_s"]
  yield ("pipeline", "seed-style PyDataset (baseline)", seq, None, None)
  yield ("pipeline", "tf.data, cold first epoch", p["cold_images_per_s"], seq,
         p["cold_vs_sequence"])
  yield ("pipeline", "tf.data, warm cache", p["warm_images_per_s"], seq, p["warm_vs_sequence"])
  t = figures["bench_train"]
  seed_rates = {s["backbone"]: s["images_per_s"] for s in t["settings"] if s["way"] == "seed"}
  for s in t["settings"]:
    if s["way"] == "seed":
      yield ("train", f"{s['backbone']} seed-style fit (baseline)", s["images_per_s"], None, None)
    else:
      setting = (f"{s['backbone']} facekp {s['precision']}, XLA {'on' if s['xla'] else 'off'}, "
                 f"{s['replicas']} replica{'s' if s['replicas'] > 1 else ''}")
      yield ("train", setting, s["images_per_s"], seed_rates[s["backbone"]], s["ratio"])


def print_table(figures):
  print(f"\nfacekp benchmarks on {figures['machine']}")
  print(f"{'stage':<9} {'setting':<52} {'images/s':>10} {'baseline':>10} {'ratio':>7}")
  for stage, setting, rate, baseline, ratio in table_rows(figures):
    rate = "failed" if math.isnan(rate) else f"{rate:,.1f}"  # bench_train says why
    print(f"{stage:<9} {setting:<52} {rate:>10} "
          f"{'' if baseline is None else f'{baseline:,.1f}':>10} "
          f"{'' if ratio is None or math.isnan(ratio) else f'{ratio:.2f}x':>7}")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as scratch:
    figures = {name: run_benchmark(name, scratch)
               for name in ("bench_annotate", "bench_pipeline", "bench_train")}
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
