"""The command line: unknown --config fields and a missing data_dir are short, clear errors."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "facekp.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_unknown_config_fields_name_the_closest_ones(tmp_path):
  result = run_main("--config=tiny", f"--workdir={tmp_path}",
                    "--config.learnig_rate=0.1", "--config.augment.flp=0.5",
                    "--config.data_dir=x")
  assert result.returncode == 1
  assert "--config.learnig_rate: no such config field; did you mean learning_rate" in result.stderr
  assert "--config.augment.flp: no such config field; did you mean augment.flip" in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_data_dir_says_how_to_make_one(tmp_path):
  result = run_main("--config=tiny", f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert "config.data_dir is not set" in result.stderr
  assert "tools.make_tfrecords" in result.stderr
  assert "Traceback" not in result.stderr


def test_the_training_path_needs_neither_the_teacher_nor_the_plotting_stack():
  """With mediapipe, matplotlib, cv2 and scipy unimportable the training modules import, and
  load none of them (TensorBoard's face grids load matplotlib when they are first drawn). (Where
  they are installed, `import tensorflow` alone loads matplotlib, cv2 and scipy through Keras'
  optional imports; facekp adds none of them.)"""
  code = """
import importlib.abc, sys
BLOCKED = ("mediapipe", "matplotlib", "cv2", "scipy")
class Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(name + " is blocked")
sys.meta_path.insert(0, Blocked())
import facekp.main, facekp.train.loop, facekp.input.input_pipeline, facekp.models.keypoint_model, facekp.input.augment
print("loaded:", [m for m in BLOCKED if m in sys.modules])
"""
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "loaded: []" in result.stdout
