"""facekp as a user installs it: the sdist and the wheel built from this checkout without a
warning, the wheel installed into a fresh virtual environment, and from an empty folder, with no
checkout in sight, the README's sample flow (make_tfrecords on the built-in photos, train by
config name, a config of one's own by path, evaluate, export, predict) and the README's Python
snippet. The dependencies come from the environment that runs the tests (no download): a .pth
file in the fresh environment points at its site-packages, whose facekp (an editable install of
the checkout, if any) stays out of sight.
"""
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Root folders of a checkout that are no part of a build: environments, runs, datasets, outputs.
_NOT_SOURCES = {".git", ".venv", "runs", "data", "build", "dist", ".pytest_cache"}
_MARKER = "<!-- python-api -->"


def copy_checkout(dest):
  """The checkout's files without environments, outputs and caches (a build writes egg-info
  into its source folder: not into the checkout, which other runs may be using)."""
  def ignore(folder, names):
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return ignored | (_NOT_SOURCES & set(names) if os.path.samefile(folder, ROOT) else set())
  shutil.copytree(ROOT, dest, ignore=ignore)


def readme_snippet():
  """The first ```python block between the two python-api markers of README.md."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    parts = f.read().split(_MARKER)
  assert len(parts) >= 3, f"README.md has no section between two {_MARKER} lines"
  block = re.search(r"^```python\n(.*?)^```", parts[1], re.S | re.M)
  assert block, f"README.md: no ```python block between the {_MARKER} lines"
  return block.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(the fresh environment's bin folder, the build's output): the wheel installed there."""
  pytest.importorskip("build", reason="python -m build: pip install -e '.[test]'")
  tmp = tmp_path_factory.mktemp("wheel")
  copy_checkout(tmp / "src")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
  built = subprocess.run(
      [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"),
       str(tmp / "src")], capture_output=True, text=True, timeout=300, env=env)
  output = built.stdout + built.stderr
  assert built.returncode == 0, output[-5000:]
  assert not re.findall(r".*(?:warning|deprecat).*", output, re.I), output[-5000:]
  wheels = [n for n in os.listdir(tmp / "dist") if n.endswith(".whl")]
  assert len(wheels) == 1 and any(n.endswith(".tar.gz") for n in os.listdir(tmp / "dist"))

  venv = tmp / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                 timeout=120)
  python = str(venv / "bin" / "python")
  install = subprocess.run(
      [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
       "--no-cache-dir", str(tmp / "dist" / wheels[0])],
      capture_output=True, text=True, timeout=300, env=env)
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
  # The dependencies: this environment's site-packages, after the wheel's own (a plain path in
  # a .pth file: the .pth files there, an editable facekp's among them, are not run).
  with open(os.path.join(purelib, "zz_facekp_test_dependencies.pth"), "w") as f:
    f.write("\n".join(dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")]))
            + "\n")
  return venv / "bin", tmp / "dist"


def run_in(folder, bin_dir, *command, timeout=600):
  """A command as a user runs it in `folder`: the fresh environment first on PATH, no
  PYTHONPATH, no debug output. Returns its stdout; its stderr must be facekp's lines only."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FACEKP_DEBUG")}
  env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
  result = subprocess.run(list(command), cwd=str(folder), capture_output=True, text=True,
                          timeout=timeout, env=env)
  assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-5000:])
  return result


def test_the_installed_wheel_runs_the_sample_flow_from_an_empty_folder(installed, tmp_path):
  bin_dir, _ = installed
  user = tmp_path / "user"  # what ./run.sh writes, in the same places: runs/sample/{data,tiny}
  user.mkdir()
  python = str(bin_dir / "python")

  found = run_in(user, bin_dir, python, "-c", textwrap.dedent("""
      import importlib.util, os, facekp
      print(os.path.dirname(facekp.__file__))
      print([m for m in ("tools", "configs") if importlib.util.find_spec(m)])
      """)).stdout.splitlines()
  package = found[0]
  assert package.startswith(str(bin_dir.parent)) and not package.startswith(ROOT), package
  assert found[1] == "[]"  # the wheel installs no top-level tools or configs package
  assert os.path.isfile(os.path.join(package, "sample", "SOURCES.md"))

  def facekp(command, *args):
    result = run_in(user, bin_dir, f"facekp-{command}", *args)
    name = command.replace("-", "_")
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"facekp {name}: ") for line in lines), result.stderr[-5000:]
    return result

  usage = run_in(user, bin_dir, "facekp-make-tfrecords", "--help").stdout
  assert "--images: " in usage and "--align: " in usage, usage  # the flags of the command

  data, tiny = "runs/sample/data", "runs/sample/tiny"
  made = facekp("make-tfrecords", "--images=sample", "--align=128", f"--out={data}",
                "--split=0.6,0.2,0.2")
  assert "the photos that ship with facekp" in made.stderr
  assert os.path.isfile(user / data / "dataset_info.json")

  facekp("train", "--config=tiny", f"--workdir={tiny}", f"--config.data_dir={data}",
         "--config.num_epochs=1", "--config.steps_per_epoch=2", "--config.evaluate_at_end=False")
  assert os.path.isfile(user / tiny / "model.keras")

  (user / "mine.py").write_text(textwrap.dedent('''
      """A config of one's own, outside any checkout: the packaged tiny, one epoch."""
      from facekp.configs import tiny


      def get_config():
        config = tiny.get_config()
        config.num_epochs = 1
        return config
      '''))
  listing = facekp("train", "--config=mine.py", f"--config.data_dir={data}",
                   "--print_config").stdout
  assert re.search(r"^num_epochs = 1\b", listing, re.M), listing
  assert re.search(rf"^data_dir = '{data}'", listing, re.M), listing

  facekp("evaluate", f"--workdir={tiny}", "--nopictures")
  assert os.path.isfile(user / tiny / "eval" / "test" / "metrics.json")
  facekp("export", f"--workdir={tiny}", "--tflite=float32", "--max_images=4")
  assert os.path.isdir(user / tiny / "export" / "saved_model")
  photo = os.path.join(package, "sample", "astronaut.jpg")
  facekp("predict", f"--model={tiny}/export/saved_model", f"--images={photo}", "--out=preds",
         "--nooverlays")
  assert os.path.isfile(user / "preds" / "predictions.csv")

  # README.md's Python snippet, in the folder the sample flow left as ./run.sh leaves it.
  (user / "readme_snippet.py").write_text(readme_snippet())
  run_in(user, bin_dir, python, "readme_snippet.py")
