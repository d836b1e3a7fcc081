"""The command line: unknown --config fields and a missing data_dir are short, clear errors."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "facekp.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_unknown_config_fields_name_the_closest_ones(tmp_path):
  result = run_main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                    "--config.learnig_rate=0.1", "--config.augment.flp=0.5",
                    "--config.data_dir=x")
  assert result.returncode == 1
  assert "--config.learnig_rate: no such config field; did you mean learning_rate" in result.stderr
  assert "--config.augment.flp: no such config field; did you mean augment.flip" in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_data_dir_says_how_to_make_one(tmp_path):
  result = run_main("--config=configs/tiny.py", f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert "config.data_dir is not set" in result.stderr
  assert "tools.make_tfrecords" in result.stderr
  assert "Traceback" not in result.stderr
