"""The command line: each user mistake is one line and a non-zero exit, --help exits 0, output
is facekp's own and reads `facekp <command>: ...` (absl's prefix with --verbosity=1), configs load
by name or by path from anywhere, a changed config is refused on resume."""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

from facekp.core import cli
from facekp.core import log_format
from facekp.core import sample
from facekp.core import stderr_filter
from facekp.core import workdir as workdir_lib

import test_train  # pylint: disable=wrong-import-order  (its synthetic dataset)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "facekp", "configs", "tiny.py")
GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")

# Runs facekp.main's command line once per argv in ONE process (importing TensorFlow once) and
# prints {"rc", "out", "err"} per run as JSON lines.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from absl import flags
    from facekp import main
    for argv in json.loads(sys.argv[1]):
      for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # config_flags defines one per override it parses
      flags.FLAGS.unparse_flags()
      out, err = io.StringIO(), io.StringIO()
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["facekp.main"] + argv
        try:
          main.run()
          rc = 0
        except SystemExit as e:
          rc = 0 if e.code is None else e.code
        except BaseException as e:
          import traceback
          err.write("Traceback (a bug):\\n" + traceback.format_exc())
          rc = "exception"
      print(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
""")


def run_main_many(argvs, cwd, env=None):
  result = subprocess.run(
      [sys.executable, "-c", DRIVER, json.dumps(argvs)], cwd=cwd, capture_output=True,
      text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_every_listed_mistake_is_one_line_and_a_non_zero_exit(tmp_path):
  data_dir = str(tmp_path / "data")
  test_train.write_dataset(data_dir)
  started = str(tmp_path / "started")
  config = test_train.small_config(data_dir)
  workdir_lib.write_config(started, config)  # a run started with the tiny recipe at 32 px
  work = str(tmp_path / "new")
  tiny = f"--config={TINY}"
  data = f"--config.data_dir={data_dir}"
  cases = [  # (argv, what stderr must say)
      ([tiny], "--workdir is required"),
      ([tiny, f"--workdir={work}", "--bogus"], "Unknown command line flag 'bogus'"),
      ([tiny, f"--workdir={work}", "--config.batch_size=abc"], "--config.batch_size=abc"),
      (["--config=configs/nope.py", f"--workdir={work}"],
       "--config=configs/nope.py: no such file or packaged config (the packaged ones: default, "),
      ([tiny, f"--workdir={work}", "--config.lr=0.1"],
       "--config.lr: no such config field (--print_config lists every field)"),
      ([tiny, f"--workdir={work}", "--config.loss=hubr", "--config.data_dir=/does/not/exist"],
       "loss='hubr': choose one of huber, mse, mae"),
      ([tiny, f"--workdir={started}", data, "--config.image_size=32", "--config.feature_stride=8",
        "--config.evaluate_at_end=False", "--config.learning_rate=0.1"],
       f"{started} holds a run started with another config: learning_rate 0.001 -> 0.1"),
      ([tiny, f"--workdir={work}", data, "--config.batch_size=64"],
       "batch_size=64 is larger than the train split"),
      ([tiny, f"--workdir={work}_imagenet", data, "--config.image_size=32",
        "--config.weights=imagenet"],
       "could not download the ImageNet weights of mobilenet_v2"),
  ]
  runs = run_main_many([argv for argv, _ in cases] + [[tiny, "--print_config"], ["--help"]],
                       cwd=str(tmp_path), env={"KERAS_HOME": str(tmp_path / "keras")})
  for (argv, expected), run in zip(cases, runs):
    assert run["rc"] == 1, (argv, run)
    assert expected in run["err"], (argv, run["err"])
    errors = [line for line in run["err"].splitlines()
              if line.startswith("facekp train: error: ")]
    assert "Traceback" not in run["err"] and len(errors) == 1 and expected in errors[0], run["err"]
    if "imagenet" not in argv[-1]:  # Keras warns that its weights are for 224 px first
      assert len(run["err"].strip().splitlines()) == 1, run["err"]
  assert "/does/not/exist" not in runs[5]["err"]  # the enum is found before any file is read
  assert not os.path.exists(work)  # none of the mistakes found before training wrote a file
  listing, help_ = runs[-2:]
  assert listing["rc"] == 0 and "loss = 'huber'  # " in listing["out"]
  assert help_["rc"] == 0 and "--print_config" in help_["out"] + help_["err"]


def test_a_command_from_another_directory_prints_one_line_and_nothing_else(tmp_path):
  """The config by absolute path from elsewhere (it imports configs.default), a bad enum found
  before the missing dataset, and none of TensorFlow's start-up lines."""
  result = subprocess.run(
      [sys.executable, "-m", "facekp.main", f"--config={TINY}", f"--workdir={tmp_path}/w",
       "--config.loss=hubr", "--config.data_dir=/does/not/exist"],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 1
  assert result.stdout == ""
  assert result.stderr.splitlines() == [
      "facekp train: error: bad config: loss='hubr': choose one of huber, mse, mae "
      "(FACEKP_DEBUG=1 or --verbosity=1 shows the traceback)"]


def test_export_on_a_missing_workdir_is_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "facekp.serve.export", f"--workdir={tmp_path}/missing"], cwd=ROOT,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert result.stderr.startswith("facekp export: error: ")
  assert f"{tmp_path}/missing" in result.stderr


def test_debug_is_asked_for_by_verbosity_or_the_environment():
  assert not cli.debug_requested([], {})
  assert cli.debug_requested(["--verbosity=1"], {})
  assert cli.debug_requested(["-v=2"], {})
  assert not cli.debug_requested(["--verbosity=0"], {})
  assert cli.debug_requested([], {"FACEKP_DEBUG": "1"})


def test_a_config_package_elsewhere_becomes_importable(tmp_path):
  package = tmp_path / "elsewhere" / "myconfigs"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "mine.py").write_text("from myconfigs import helper\n")
  assert cli.make_config_importable([f"--config={package}/mine.py"]) is None
  assert str(tmp_path / "elsewhere") in sys.path
  sys.path.remove(str(tmp_path / "elsewhere"))
  assert "no such file" in cli.make_config_importable([f"--config={tmp_path}/nope.py:arg"])


def test_the_noise_filter_keeps_real_errors():
  noise = ("E0000 00:00:1796118913.891583   12837 cuda_dnn.cc:8579] Unable to register cuDNN "
           "factory: Attempting to register factory for plugin cuDNN when one has already been "
           "registered")
  assert not stderr_filter.passes(noise)
  assert stderr_filter.passes("E1201 10:00:00 train.py:1] disk full: no space left on device")
  assert stderr_filter.passes("Traceback (most recent call last):")


def test_a_command_writes_facekp_lines_and_verbosity_brings_back_absls_prefix(tmp_path):
  """make_tfrecords on two sample photos, as the README runs it: every line reads
  `facekp make_tfrecords: ...` (a warning `... warning: ...`), none carries absl's glog prefix;
  run again with --verbosity=1 (it resumes), its lines carry absl's prefix again."""
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("astronaut.jpg", "grace_hopper.jpg"):
    shutil.copy(os.path.join(sample.SAMPLE_DIR, name), photos / name)
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={photos}",
             f"--out={tmp_path}/out", "--align=128", "--workers=1"]
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("FACEKP_DEBUG", None)
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert lines and all(line.startswith("facekp make_tfrecords: ") for line in lines), lines
  assert not any(GLOG_PREFIX.match(line) for line in lines)
  assert any(line.startswith("facekp make_tfrecords: annotated 2/2 images") for line in lines)
  # Two photos leave a split empty: TFDS cannot hold it, and the line says so as a warning.
  assert any(line.startswith("facekp make_tfrecords: warning: split ") for line in lines), lines

  verbose = subprocess.run(command + ["--verbosity=1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=env)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  glog = [line for line in verbose.stderr.splitlines() if GLOG_PREFIX.match(line)]
  assert any(re.search(r" annotate\.py:\d+\] 2 images: 2 annotated before", line)
             for line in glog), verbose.stderr[-3000:]
  assert "facekp make_tfrecords: " not in verbose.stderr


WORKER_RUN = textwrap.dedent("""
    from facekp.core import cli
    from absl import logging
    from facekp.core import workers

    def main(argv):
      logging.warning("from the run")
      with workers.Pool(1) as pool:
        list(pool.map(logging.warning, ["from a worker"]))

    cli.run(main, name="demo")
""")


def test_worker_processes_write_the_lines_of_their_command(tmp_path):
  result = subprocess.run([sys.executable, "-c", WORKER_RUN], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 2 and all(line.startswith("facekp demo: warning: ") for line in lines)
  assert lines[0].endswith(": from the run") and lines[1].endswith(": from a worker"), lines


def test_the_line_format():
  own = logging.LogRecord("absl", logging.INFO, os.path.join(log_format.PACKAGE, "x.py"), 1,
                          "annotated %d images", (3,), None)
  other = logging.LogRecord("tensorflow", logging.WARNING, "/site-packages/tensorflow/x.py", 1,
                            "retracing", (), None)
  formatter = log_format.CommandFormatter("train")
  assert formatter.format(own) == "facekp train: annotated 3 images"
  assert formatter.format(other) == "facekp train: warning: tensorflow: retracing"
  own.levelno = logging.ERROR
  assert formatter.format(own) == "facekp train: error: annotated 3 images"
  assert log_format.command_name("facekp.main") == "train"
  assert log_format.command_name("facekp.data.make_tfrecords") == "make_tfrecords"
  assert log_format.command_name("tools.make_tfrecords") == "make_tfrecords"


def test_a_packaged_config_by_name():
  assert cli.config_file("tiny") == cli.config_file("tiny.py") == TINY
  assert cli.config_file(TINY) == TINY
  assert cli.config_file("nope") is None and cli.config_file("facekp/configs") is None
  assert {"default", "tiny", "few_faces"} <= set(cli.packaged_configs())
  assert cli.resolve_config_name(["--config=few_faces:arg", "--config.batch_size=8", "--x=tiny"]) \
      == [f"--config={os.path.dirname(TINY)}/few_faces.py:arg", "--config.batch_size=8", "--x=tiny"]
  assert cli.resolve_config_name(["--config=nope"]) == ["--config=nope"]
