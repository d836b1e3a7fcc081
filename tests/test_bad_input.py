"""Bad input to any command ends with one line starting "error:" and exit status 1, never a
traceback: every flag of every command out of range or of the wrong type, every file a command
reads holding the wrong shape, a full disk; SIGTERM stops with a message and status 143; a UTF-8
file name is read under an ASCII locale.

The commands run as `python -m MODULE` from the repository root. Importing TensorFlow costs each
process seconds, so the flag and file cases of one command run in one process (DRIVER: each
case as `python -m` runs it, its stderr marked off), and the processes run two at a time.
"""
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from facekp.core import files
from facekp.core import keypoint_csv
from facekp.core import sample
from facekp.core import workdir as workdir_lib
from facekp.train import hardware

import test_train  # pylint: disable=wrong-import-order  (its synthetic dataset and config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**{k: v for k, v in os.environ.items() if k != "FACEKP_DEBUG"}, "PYTHONPATH": ROOT}
# The line a user error ends with (facekp's own prefix, "facekp <command>: ", may lead it).
ERROR_LINE = re.compile(r"^(?:facekp \S+: )?error: ")
# A bad case is refused before any real work: well within this.
QUICK_S = 30

# Runs `python -m MODULE` once per argv of CASES (a JSON list) in this one process, as `python
# -m` would (runpy, __name__ == "__main__"); before each case it writes a marker line to stderr,
# after it one JSON line to stdout: {"rc", "seconds"}. Flags the module defined, and modules
# loaded from files outside the repository and the environment (config files), are forgotten
# between cases.
DRIVER = textwrap.dedent("""
    import json, os, runpy, sys, time, traceback
    from facekp.core import cli
    from absl import flags
    module, cases, root = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    own = (root, sys.prefix, sys.base_prefix)
    base_flags, base_modules = set(flags.FLAGS), set(sys.modules)
    for i, argv in enumerate(cases):
      sys.stdout.flush()
      sys.stderr.write(f"@@case {i}@@\\n")
      sys.stderr.flush()
      sys.argv, start = [module] + argv, time.time()
      try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        rc = 0
      except SystemExit as e:
        rc = 0 if e.code is None else e.code
      except BaseException:
        traceback.print_exc()
        rc = "exception"
      sys.stderr.flush()
      print(json.dumps({"rc": rc, "seconds": time.time() - start}), flush=True)
      for name in set(flags.FLAGS) - base_flags:
        delattr(flags.FLAGS, name)
      flags.FLAGS.unparse_flags()
      for name in set(sys.modules) - base_modules:
        path = getattr(sys.modules[name], "__file__", None) or root
        if not os.path.abspath(path).startswith(own):
          del sys.modules[name]
    sys.stderr.write("@@end@@\\n")
""")


def run_cases(module, cases, cwd=ROOT):
  """[(argv, expected, rc, stderr, seconds)] of each (argv, expected) case of `module`."""
  result = subprocess.run(
      [sys.executable, "-c", DRIVER, module, json.dumps([argv for argv, _ in cases]), ROOT],
      cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)
  errs = re.split(r"@@case \d+@@\n", result.stderr.split("@@end@@")[0])[1:]
  outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"rc"')]
  assert len(outcomes) == len(cases) == len(errs), result.stderr[-3000:]
  return [(argv, expected, o["rc"], err, o["seconds"])
          for (argv, expected), o, err in zip(cases, outcomes, errs)]


def one_error_line(rc, err):
  """The error line of a refused command, after checking that there is exactly one and no
  traceback; None when it was not refused so."""
  lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
  if rc != 1 or len(lines) != 1 or "Traceback" in err:
    return None
  return lines[0]


def check_refusals(results):
  """Every case exited 1 quickly, with one error line holding what it expected."""
  wrong = []
  for argv, expected, rc, err, seconds in results:
    line = one_error_line(rc, err)
    if line is None or expected not in line or seconds > QUICK_S:
      wrong.append(f"{' '.join(argv)}\n  rc={rc} in {seconds:.1f} s, expected {expected!r}, "
                   f"stderr:\n{err[-2000:]}")
  assert not wrong, "\n".join(wrong)


# --- Inputs --------------------------------------------------------------------------------


def write(path, content):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content.encode() if isinstance(content, str) else content)
  return str(path)


def damaged_copy(source, target, name, content):
  """A copy of folder `source` whose file `name` holds `content` instead."""
  shutil.copytree(source, target)
  write(os.path.join(target, name), content)
  return str(target)


def constant_model(path, size=32):
  """A real Keras keypoint model (uint8 [N, size, size, 3] -> [N, 5, 2])."""
  inputs = keras.Input((size, size, 3))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  x = keras.layers.Dense(10, kernel_initializer="zeros",
                         bias_initializer=keras.initializers.Constant(0.5))(x)
  keras.Model(inputs, keras.layers.Reshape((5, 2))(x)).save(path)


def noise_png(path, size, seed):
  image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
  write(path, tf.io.encode_png(image).numpy())


def labels_csv(path, names, size):
  points = (test_train.MEAN_FACE * size).ravel()
  rows = [",".join([name] + [f"{v:.1f}" for v in points]) for name in names]
  header = ",".join(("image_name",) + test_train.SCHEMA.csv_point_columns)
  return write(path, "\n".join([header] + rows) + "\n")


# Files a command reads, each with a wrong shape: (file, content, what the error names).
SCHEMAS = {
    "schema_list": ("[1, 2, 3]", "the keypoint schema must be an object, not a list"),
    "schema_null": ("null", "the keypoint schema must be an object, not null"),
    "schema_not_json": ("{oops", "schema.json: not valid JSON"),
    "schema_no_keys": ('{"names": []}', "mesh_indices must be a non-empty list"),
    "schema_lengths": ('{"mesh_indices": [1, 33, 61], "mirror_indices": [1, 61]}',
                       "mirror_indices must give one partner per slot"),
    "schema_types": ('{"mesh_indices": "abc", "mirror_indices": [1]}',
                     "mesh_indices must be a non-empty list"),
    "schema_nested": ('{"mesh_indices": [[1]], "mirror_indices": [[1]]}',
                      "mesh_indices must be a non-empty list"),
}
DATASET_INFOS = {
    "info_not_json": ("dataset_info.json", "{oops", "dataset_info.json: not valid JSON"),
    "info_empty": ("dataset_info.json", "", "dataset_info.json: not valid JSON"),
    "info_list": ("dataset_info.json", "[]", "TFDS metadata file must be an object, not a list"),
    "info_splits": ("dataset_info.json", '{"splits": 3}', "its TFDS metadata"),
    "features_not_json": ("features.json", "{oops", "features.json: not valid JSON"),
}
WORKDIR_FILES = {
    "config_list": ("config.json", "[1]", "config.json: the config must be an object"),
    "config_not_json": ("config.json", "{oops", "config.json: not valid JSON"),
    "config_types": ("config.json", '{"data_dir": 3, "image_size": 32, "huber_delta": 1.0}',
                     "config.json: data_dir=3 must be a folder name"),
    "config_size": ("config.json", '{"data_dir": "d", "image_size": "big", "huber_delta": 1}',
                    "config.json: image_size='big' must be an integer"),
    "config_missing": ("config.json", '{"data_dir": "d"}', "the field image_size is missing"),
    "mean_list": ("train_mean_keypoints.json", "[1]", "the training mean must be an object"),
    "mean_shape": ("train_mean_keypoints.json", '{"mean_keypoints": [[1, 2, 3]]}',
                   "mean_keypoints must be a list of [x, y] pairs"),
    "mean_text": ("train_mean_keypoints.json", '{"mean_keypoints": "x"}',
                  "mean_keypoints must be a list of [x, y] pairs"),
    "mean_no_key": ("train_mean_keypoints.json", "{}", "the field mean_keypoints is missing"),
    "model_random": ("model.keras", bytes(range(256)) * 8, "is not a valid Keras model file"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A dataset, a workdir trained on it (a constant model), photos and damaged copies."""
  root = tmp_path_factory.mktemp("bad_input")
  data = str(root / "data")
  test_train.write_dataset(data)
  work = str(root / "work")
  workdir_lib.write_config(work, test_train.small_config(data))
  constant_model(f"{work}/model.keras")
  workdir_lib.write_train_mean(work, test_train.MEAN_FACE, data, 32)
  write(f"{work}/{workdir_lib.HISTORY}", "epoch,loss,val_loss\n1,0.5,0.4\n")
  noise_png(str(root / "images" / "photo.png"), 32, 0)
  paths = {"root": str(root), "data": data, "work": work, "images": str(root / "images"),
           "file": write(str(root / "a_file.txt"), "not a folder\n")}
  for name, (content, _) in SCHEMAS.items():
    paths[name] = damaged_copy(data, root / name, "schema.json", content)
  for name, (file_name, content, _) in DATASET_INFOS.items():
    paths[name] = damaged_copy(data, root / name, file_name, content)
  for name, (file_name, content, _) in WORKDIR_FILES.items():
    paths[name] = damaged_copy(work, root / name, file_name, content)
  return paths


# --- The commands' flags and files -----------------------------------------------------------


def make_tfrecords_cases(p):
  root, images = p["root"], f"--images={p['images']}"
  out = f"--out={root}/out"
  csv = lambda name, text: f"--csv={write(f'{root}/csvs/{name}', text)}"
  header = ",".join(("image_name",) + test_train.SCHEMA.csv_point_columns)
  schema = open(f"{p['data']}/schema.json").read()
  bad_schema_out = os.path.dirname(write(f"{root}/out_schema/schema.json", "[1]"))
  csv_out = f"--out={os.path.dirname(write(f'{root}/out_csv/schema.json', schema))}"
  bad_journal_out = os.path.dirname(write(f"{root}/out_journal/schema.json", schema))
  write(f"{bad_journal_out}/face_keypoints.journal", "#facekp-journal {not json\n")
  return [
      ([images, out, "--split=nan,0.5,0.5"], "--split=nan,0.5,0.5: must be 3 fractions"),
      ([images, out, "--split=inf,0,0"], "--split=inf,0,0: must be 3 fractions"),
      ([images, out, "--split=0.5,0.5"], "--split=0.5,0.5: must be 3 fractions"),
      ([images, out, "--split=a,b,c"], "--split=a,b,c: must be three comma-separated numbers"),
      ([images, out, "--align=-5"], "--align=-5: must be an integer from 32 to 4096"),
      ([images, out, "--align=16"], "--align=16: must be an integer from 32 to 4096"),
      ([images, out, "--align=abc"], "--align=abc"),
      ([images, out, "--max_faces=0"], "--max_faces=0: must be an integer from 1 to 100"),
      ([images, out, "--workers=-1"], "--workers=-1: must be an integer from 0 to 256"),
      ([images, out, "--workers=100000"], "--workers=100000: must be an integer from 0 to 256"),
      ([images, out, "--num_shards=-1"], "--num_shards=-1: must be an integer from 0"),
      ([images, out, "--chunk_size=-3"], "--chunk_size=-3: must be an integer from 0"),
      ([images, out, "--chunk_size=1e3"], "--chunk_size=1e3"),
      ([images, out, "--landmarks=1,1"], "--landmarks=1,1: must be distinct Face Mesh indices"),
      ([images, out, "--landmarks=999"], "--landmarks=999: must be distinct Face Mesh indices"),
      ([images, out, "--landmarks=x"], "--landmarks=x: must be comma-separated integers"),
      ([images, out, "--csv_units=bogus"], "--csv_units=bogus"),
      ([images, out, "--csv_units=normalised"], "--csv_units=normalised applies to"),
      ([images, out, "--runner=bogus"], "--runner=bogus"),
      ([images, out, "--beam_pipeline_options=x=1"], "--beam_pipeline_options apply to"),
      ([images, out, "--runner=beam", "--beam_pipeline_options=foo"], "'foo' is not KEY=VALUE"),
      ([images, out, "--csv=/no/such.csv"], "--csv=/no/such.csv: no such CSV file"),
      ([images, out, f"--csv={root}"], "is a folder, not a CSV file"),
      (["--images=/no/such/folder", out], "--images=/no/such/folder: no such image folder"),
      ([f"--images={p['file']}", out], "is a file, not a image folder"),
      (["--images=", out], "--images is empty"),
      ([images, f"--out={p['file']}"], "is a file, not a folder"),
      ([images, f"--out={p['file']}/sub"], f"leads through the file {p['file']}"),
      ([images], "--out is required"),
      ([images, out, "--bogus"], "Unknown command line flag 'bogus'"),
      ([images, out, "extra"], "unexpected arguments: extra"),
      ([images, csv_out, csv("columns.csv", "a,b\n1,2\n")], "missing required column(s)"),
      ([images, csv_out, csv("latin1.csv", f"{header}\n".encode() + b"caf\xe9.png,1\n")],
       "latin1.csv: not a UTF-8 CSV file"),
      ([images, csv_out, csv("text.csv", f"{header}\nphoto.png{',x' * 10}\n")],
       "text.csv, line 2, column point_1_x: 'x' is not a number"),
      ([images, csv_out, csv("short.csv", f"{header}\nphoto.png,1\n")],
       "short.csv, line 2: 2 fields, but the header has 11"),
      ([images, f"--out={bad_schema_out}"], "schema.json: the keypoint schema must be an object"),
      ([images, f"--out={bad_journal_out}"], "face_keypoints.journal is damaged"),
  ]


def main_cases(p):
  root, data = p["root"], f"--config.data_dir={p['data']}"
  tiny = "--config=tiny"
  work = iter(range(1000))
  new = lambda: f"--workdir={root}/runs/{next(work)}"
  config = lambda name, line: write(
      f"{root}/configs/{name}.py",
      f"from facekp.configs import default\n\ndef get_config():\n  config = default.get_config()\n"
      f"  {line}\n  return config\n")
  dataset = lambda name: f"--config.data_dir={p[name]}"
  return [
      ([tiny, data, new(), "--config.learning_rate=inf"], "learning_rate=inf: must be a finite"),
      ([tiny, data, new(), "--config.learning_rate=nan"], "learning_rate=nan: must be a finite"),
      ([tiny, data, new(), "--config.augment.rotation=inf"], "augment.rotation=inf: must be a"),
      ([tiny, data, new(), "--config.augment.flip=banana"], "--config.augment.flip=banana"),
      ([tiny, data, new(), "--config.augment.flip=2"], "augmentation flip=2.0 is outside 0..1"),
      ([tiny, data, new(), "--config.augment=3"], "--config.augment=3"),
      ([tiny, data, new(), "--config.batch_size=abc"], "--config.batch_size=abc"),
      ([tiny, data, new(), "--config.batch_size=0"], "batch_size=0: must be at least 1"),
      ([tiny, data, new(), "--config.seed=-1"], "seed=-1: must be from 0 to 2**31 - 1"),
      ([tiny, data, new(), "--config.image_size=100000"], "image_size=100000: must be from 1"),
      ([tiny, data, new(), "--config.loss=hubr"], "loss='hubr': choose one of"),
      ([tiny, data, new(), "--config.lr=0.1"], "--config.lr: no such config field"),
      ([tiny, data, new(), '--config.backbone_kwargs={"alpah": 0.35}'],
       "backbone_kwargs.alpah: mobilenet_v2 takes no such argument"),
      ([tiny, data, new(), "--config.weights=/no/such.h5"], "--config.weights=/no/such.h5: no"),
      ([tiny, data, new(), f"--config.cache={p['file']}/cache"], "leads through the file"),
      ([tiny, data, new(), "--restart=banana"], "--restart=banana"),
      ([tiny, data, f"--workdir={p['file']}"], f"--workdir={p['file']} is a file, not a folder"),
      ([tiny, data], "--workdir is required"),
      (["--config=/no/such/config.py", new()], "--config=/no/such/config.py: no such file"),
      ([f"--config={config('unknown', 'config.augment.rotate_degrees = 3.0')}", data, new()],
       "augment.rotate_degrees: no such config field"),
      ([f"--config={config('wrong_type', 'config.augment.rotation = chr(120)')}", data, new()],
       "wrong_type.py, line 5: TypeError: Could not override field 'rotation'"),
      ([f"--config={config('raises', 'config.x = 1 / 0')}", data, new()], "division by zero"),
      ([tiny, "--config.data_dir=/no/such/data", new()], "config.data_dir=/no/such/data: no"),
      ([tiny, dataset("schema_list"), new()], "the keypoint schema must be an object"),
      ([tiny, dataset("info_not_json"), new()], "dataset_info.json: not valid JSON"),
      ([tiny, dataset("info_splits"), new()], "its TFDS metadata"),
      ([tiny, data, f"--workdir={p['config_list']}"], "config.json: the config must be an"),
      ([tiny, data, f"--workdir={p['config_not_json']}"], "config.json: not valid JSON"),
  ]


def evaluate_cases(p):
  work = f"--workdir={p['work']}"
  cases = [
      ([f"--workdir={p['file']}"], "is a file, not a facekp workdir"),
      ([f"--workdir={p['root']}/no_such_run"], "config.json is missing"),
      ([], "--workdir is required"),
      ([work, "--split=bogus"], "has no split 'bogus'"),
      ([work, "--tta_flip=x"], "--tta_flip=x"),
      ([work, "--pictures=2"], "--pictures=2"),
      ([work, f"--data_dir={p['file']}"], "is a file, not a facekp dataset"),
      ([work, f"--data_dir={p['root']}/no_such_data"], "is not a facekp dataset"),
  ]
  cases += [([work, f"--data_dir={p[name]}"], expected) for name, (_, expected) in SCHEMAS.items()]
  cases += [([work, f"--data_dir={p[name]}"], expected)
            for name, (_, _, expected) in DATASET_INFOS.items()]
  cases += [([f"--workdir={p[name]}", f"--data_dir={p['data']}", "--nopictures"], expected)
            for name, (_, _, expected) in WORKDIR_FILES.items()]
  return cases


def export_cases(p):
  work = f"--workdir={p['work']}"
  crop = damaged_copy(p["data"], f"{p['root']}/crop", "schema.json", json.dumps(
      {"mesh_indices": [1, 33, 61, 263, 291], "mirror_indices": [1, 263, 291, 33, 61],
       "keypoints": [1]}))
  return [
      ([work, "--max_images=0"], "--max_images=0: must be an integer from 1 to 10000"),
      ([work, "--max_images=x"], "--max_images=x"),
      ([work, "--tflite=float32,int4"], "--tflite=int4: choose one of float32"),
      ([work, "--tta_flip=x"], "--tta_flip=x"),
      ([f"--workdir={p['file']}"], "is a file, not a facekp workdir"),
      ([work, "--data_dir=/no/such/data"], "--data_dir=/no/such/data: no such dataset folder"),
      ([work, f"--data_dir={crop}"], 'its "keypoints" record must be an object'),
      ([work, f"--data_dir={p['schema_list']}"], "the keypoint schema must be an object"),
      ([f"--workdir={p['model_random']}"], "is not a valid Keras model file"),
      ([f"--workdir={p['config_list']}"], "config.json: the config must be an object"),
  ]


def predict_cases(p):
  root, work = p["root"], p["work"]
  model, photos, out = f"--model={work}", f"--images={p['images']}", f"--out={root}/predicted"
  fake = lambda name, content: f"--model={write(f'{root}/models/{name}', content)}"

  def export(name, report):  # a workdir whose export_report.json holds `report`
    folder = damaged_copy(work, f"{root}/{name}", "export_report.json", report)
    return f"--model={folder}/model.keras"
  journal_out = os.path.dirname(write(f"{root}/journal_out/predictions.journal", "garbage\n"))
  saved_model = os.path.dirname(write(f"{root}/models/saved/saved_model.pb", b"\x00garbage"))
  return [
      ([model, photos, out, "--max_faces=0"], "--max_faces=0: must be an integer from 1 to 100"),
      ([model, photos, out, "--max_faces=1000"], "--max_faces=1000: must be an integer"),
      ([model, photos, out, "--max_faces=x"], "--max_faces=x"),
      ([model, photos, out, "--overlays=x"], "--overlays=x"),
      ([model, photos, f"--out={p['file']}"], f"--out={p['file']} is a file, not a folder"),
      ([model, "--images=/no/such/photo.jpg", out], "--images=/no/such/photo.jpg: no such"),
      (["--model=/no/such/model.keras", photos, out], "--model=/no/such/model.keras: no such"),
      ([model, photos], "--out is required"),
      ([fake("random.keras", bytes(range(256)) * 8), photos, out],
       "random.keras is not a valid Keras model file"),
      ([fake("zip.keras", b"PK\x03\x04garbage"), photos, out],
       "zip.keras is not a valid Keras model file"),
      ([fake("random.tflite", bytes(range(256)) * 8), photos, out],
       "random.tflite is not a valid facekp TFLite model"),
      ([f"--model={saved_model}", photos, out], "is not a valid facekp SavedModel"),
      ([f"--model={p['images']}", photos, out], "is not a keypoint model"),
      ([f"--model={p['config_list']}", photos, out], "config.json: the config must be an"),
      ([export("report_list", "[1]"), photos, out], "export_report.json: the file must be an"),
      ([export("report_schema", '{"schema": [1]}'), photos, out], "its schema record must be"),
      ([export("report_keys", '{"schema": {"mesh_indices": [1]}}'), photos, out],
       "mirror_indices must be a non-empty list"),
      ([model, photos, f"--out={journal_out}"], "predictions.journal is damaged"),
  ]


# --- A full disk, SIGTERM, a UTF-8 name under LC_ALL=C -----------------------------------------


@contextlib.contextmanager
def tmpfs(folder, size):
  """A real file system of `size` bytes mounted at `folder` (a copy of a dataset's schema.json
  in it spares make_tfrecords deriving one), or None where this process may not mount one."""
  os.makedirs(folder)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder],
                    capture_output=True).returncode:
    yield None
    return
  try:
    yield folder
  finally:
    subprocess.run(["umount", "-l", folder], check=False)


def files_in(folder):
  return {name: os.path.getsize(os.path.join(where, name))
          for where, _, names in os.walk(folder) for name in names}


def with_full_disk(p, module, cases, name, size, full_disk_case):
  """run_cases(module, cases) and, in the same process, full_disk_case(out) with --out on a
  tmpfs of `size`: (the cases' results, (the full disk's results, out, the files left there));
  the latter None where mounting is not permitted."""
  with tmpfs(os.path.join(p["root"], name), size) as out:
    if out is None:
      return run_cases(module, cases), None
    shutil.copy(f"{p['data']}/schema.json", out)
    results = run_cases(module, cases + [full_disk_case(out)])
    return results[:-1], (results[-1:], out, files_in(out))


def full_disk_make_tfrecords_case(p, out):
  """Eight images of about 200 KB labelled by a CSV: the shards fill a 1 MB disk."""
  images = os.path.join(p["root"], "noise")
  names = [f"n{i}.png" for i in range(8)]
  for i, name in enumerate(names):
    noise_png(os.path.join(images, name), 256, i)
  csv = labels_csv(os.path.join(p["root"], "noise_labels.csv"), names, 256)
  return ([f"--images={images}", f"--out={out}", f"--csv={csv}", "--workers=1"],
          f"no space left on the disk of {out}")


def full_disk_predict_case(p, out):
  """Three photos: their overlays fill a 512 KB disk."""
  photos = os.path.join(p["root"], "photos")
  os.makedirs(photos)
  for i in range(3):
    shutil.copy(os.path.join(sample.SAMPLE_DIR, "astronaut.jpg"), f"{photos}/p{i}.jpg")
  return ([f"--model={p['work']}", f"--images={photos}", f"--out={out}"],
          f"no space left on the disk of {out}")


def terminated_training(p):
  """Training sent SIGTERM once it has started writing its workdir: (rc, stderr)."""
  work = os.path.join(p["root"], "terminated")
  run = subprocess.Popen(
      [sys.executable, "-m", "facekp.main", "--config=tiny",
       f"--workdir={work}", f"--config.data_dir={p['data']}", "--config.image_size=32",
       "--config.feature_stride=8", "--config.num_epochs=50", "--config.evaluate_at_end=False"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
  deadline = time.time() + 240
  while (run.poll() is None and time.time() < deadline
         and not os.path.exists(os.path.join(work, workdir_lib.TRAIN_MEAN))):
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  _, err = run.communicate(timeout=120)
  return run.returncode, err


def utf8_name_under_ascii_locale(p):
  """predict on a folder holding visage-été.jpg under LC_ALL=C, PYTHONUTF8=0."""
  photos = os.path.join(p["root"], "accents")
  os.makedirs(photos)
  shutil.copy(os.path.join(sample.SAMPLE_DIR, "astronaut.jpg"), f"{photos}/visage-été.jpg")
  out = os.path.join(p["root"], "accents_out")
  env = {**ENV, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
  result = subprocess.run(
      [sys.executable, "-m", "facekp.serve.predict", f"--model={p['work']}",
       f"--images={photos}", f"--out={out}", "--nooverlays"],
      cwd=ROOT, capture_output=True, env=env, timeout=300)
  return result, out


# The processes behind the tests, and the tests that read each one.
JOBS = {
    "make_tfrecords": lambda p: with_full_disk(
        p, "tools.make_tfrecords", make_tfrecords_cases(p), "full_data", "1m",
        lambda out: full_disk_make_tfrecords_case(p, out)),
    "main": lambda p: run_cases("facekp.main", main_cases(p)),
    "evaluate": lambda p: run_cases("facekp.eval.evaluate", evaluate_cases(p)),
    "export": lambda p: run_cases("facekp.serve.export", export_cases(p)),
    "predict": lambda p: with_full_disk(
        p, "facekp.serve.predict", predict_cases(p), "full_predictions", "512k",
        lambda out: full_disk_predict_case(p, out)),
    "sigterm": terminated_training,
    "utf8": utf8_name_under_ascii_locale,
}
JOB_OF_TEST = {
    "test_every_make_tfrecords_flag_and_file": "make_tfrecords",
    "test_a_full_disk_in_make_tfrecords_is_one_line": "make_tfrecords",
    "test_every_training_flag_config_field_and_file": "main",
    "test_every_evaluate_flag_and_file": "evaluate",
    "test_every_export_flag_and_file": "export",
    "test_every_predict_flag_and_file": "predict",
    "test_a_full_disk_in_predict_is_one_line": "predict",
    "test_sigterm_stops_training_with_a_message_and_status_143": "sigterm",
    "test_a_utf8_file_name_is_read_under_an_ascii_locale": "utf8",
}


@pytest.fixture(scope="module")
def runs(request, inputs):
  """{job: its future} for the jobs of the selected tests of this module, two at a time."""
  selected = {JOB_OF_TEST[item.name] for item in request.session.items
              if item.module.__name__ == __name__ and item.name in JOB_OF_TEST}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    yield {name: pool.submit(job, inputs) for name, job in JOBS.items() if name in selected}


def test_every_make_tfrecords_flag_and_file(runs):
  check_refusals(runs["make_tfrecords"].result()[0])


def test_every_training_flag_config_field_and_file(runs, inputs):
  check_refusals(runs["main"].result())
  assert not os.path.exists(os.path.join(inputs["root"], "runs"))  # refused before any write


def test_every_evaluate_flag_and_file(runs):
  check_refusals(runs["evaluate"].result())


def test_every_export_flag_and_file(runs, inputs):
  check_refusals(runs["export"].result())
  assert not os.path.exists(os.path.join(inputs["work"], workdir_lib.EXPORT))


def test_every_predict_flag_and_file(runs):
  check_refusals(runs["predict"].result()[0])


def check_full_disk(outcome):
  """One error line naming the folder, and no temporary file left: the files there are whole."""
  if outcome is None:
    pytest.skip("mounting a tmpfs needs root")
  results, out, left = outcome
  check_refusals(results)
  assert not [name for name in left if files.is_temporary(name)], left
  return left


def test_a_full_disk_in_make_tfrecords_is_one_line(runs):
  """A real 1 MB tmpfs, filled by the shards: the message names --out; no shard was left."""
  left = check_full_disk(runs["make_tfrecords"].result()[1])
  assert "cleaned.csv" in left and not [name for name in left if ".tfrecord-" in name], left


def test_a_full_disk_in_predict_is_one_line(runs):
  """A real 512 KB tmpfs, filled by the overlays: the journal keeps the photos done."""
  left = check_full_disk(runs["predict"].result()[1])
  assert "predictions.journal" in left and "predictions.csv" not in left, left


def test_sigterm_stops_training_with_a_message_and_status_143(runs):
  rc, err = runs["sigterm"].result()
  assert rc == 143, err[-3000:]
  assert "interrupted: run the same command again" in err and "Traceback" not in err, err


def test_a_utf8_file_name_is_read_under_an_ascii_locale(runs):
  result, out = runs["utf8"].result()
  stderr = result.stderr.decode("utf-8", "replace")
  assert result.returncode == 0, stderr[-3000:]
  assert "not utf8" not in stderr
  with open(os.path.join(out, "predictions.csv"), encoding="utf-8") as f:
    names = [line.split(",")[0] for line in f.read().splitlines()[1:]]
  assert names == ["visage-été_f0.png"], names


# --- The readers, in process -------------------------------------------------------------


def test_history_csv_of_the_wrong_shape_names_the_file_and_line(tmp_path):
  path = str(tmp_path / "history.csv")
  for content, expected in [("epoch,loss\n1,banana\n", "line 2, column loss: 'banana' is not"),
                            ("epoch,loss\n1.5,0.1\n", "column epoch: '1.5' is not an integer"),
                            ("epoch,loss\n1,0.1,7\n", "line 2 does not have a value for each"),
                            (b"\xff\xfe\x00", "not a CSV file")]:
    write(path, content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + ".*" + re.escape(expected)):
      workdir_lib.read_history(path)
  write(path, "epoch,loss,val_loss\n1,0.5,\n")  # a metric missing from an epoch is blank
  assert workdir_lib.read_history(path) == [{"epoch": "1", "loss": "0.5", "val_loss": ""}]


def test_run_records_of_the_wrong_shape_name_the_file(tmp_path):
  """dataset.json (resume's dataset check) and config_source.json (the model card)."""
  work = str(tmp_path)
  for name, content, read, expected in [
      ("dataset.json", "[1]", workdir_lib.read_dataset, "must be an object, not a list"),
      ("dataset.json", '{"splits": [1], "shards_sha256": "x"}', workdir_lib.read_dataset,
       'it must hold "splits"'),
      ("config_source.json", '{"config_file": 3}', workdir_lib.read_config_source,
       "config_file must be a path or null, not a number")]:
    write(os.path.join(work, name), content)
    with pytest.raises(ValueError, match=re.escape(f"{work}/{name}: ") + ".*" + re.escape(
        expected)):
      read(work)
    os.remove(os.path.join(work, name))


def test_tf_config_of_the_wrong_shape_is_named(monkeypatch):
  for text in ("[1]", '{"cluster": []}', '{"task": 3}'):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match="TF_CONFIG.* must be a JSON object"):
      hardware.is_chief()


def test_a_csv_with_a_nul_byte_is_a_value_error(tmp_path, default_schema):
  path = write(str(tmp_path / "nul.csv"), "image_name\0,point_1_x\n")
  with pytest.raises(ValueError, match=r"missing required column.*image_name\\x00"):
    keypoint_csv.read_keypoints_csv(path, default_schema)
