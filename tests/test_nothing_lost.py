"""Reruns lose nothing and mix nothing: changed photos, names that meet, names near the limit,
and training resumed on a rewritten dataset. Each test does what a user did, then checks values."""
import csv
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import images
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.data import make_tfrecords
from facekp.serve import predict
from facekp.train import loop
from conftest import SAMPLE_DIR, encode, user_csv

from facekp.configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
MODEL_SIZE = 64


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def points(row):
  return [float(row[c]) for c in SCHEMA.csv_point_columns]


def examples(out):
  """{image name: (pixels, keypoints_px)} of every split, as TFDS reads the shards back."""
  builder = dataset_info.builder(out)
  return {ex["image_name"].decode(): (ex["image"], ex["keypoints_px"])
          for split in builder.info.splits
          for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def replace_keeping_size_and_time(path, data):
  """Writes new content of the same size over a file and puts its times back (as a restore or
  `cp -p` does): size and mtime say nothing changed."""
  before = os.stat(path)
  assert len(data) == before.st_size
  with open(path, "wb") as f:
    f.write(data)
  os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
  assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def constant_model(path):
  """A real Keras model that answers the same normalised points for every face."""
  keypoints = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]])
  inputs = keras.Input((MODEL_SIZE, MODEL_SIZE, 3))
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  x = keras.layers.Dense(keypoints.size, kernel_initializer="zeros",
                         bias_initializer=keras.initializers.Constant(keypoints.reshape(-1)))(x)
  keras.Model(inputs, keras.layers.Reshape(keypoints.shape)(x)).save(path)
  return str(path)


@pytest.fixture(scope="module")
def bmp_faces():
  """Three different faces as BMPs of one size (so of one byte size)."""
  faces = sample.sample_faces(160)
  found = [encode(faces[i], "BMP") for i in (0, 4, 5)]  # 0-f1-su-ph, astronaut, grace_hopper
  assert len({len(data) for data in found}) == 1 and len(set(found)) == 3
  return found


# --- 1. A changed photo keeps none of its old labels ---------------------------------------


def test_a_photo_replaced_by_one_of_the_same_size_and_time_is_labelled_again(tmp_path,
                                                                              bmp_faces):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name, data in zip(("a.bmp", "b.bmp", "c.bmp"), bmp_faces):
    (photos / name).write_bytes(data)
  out = str(tmp_path / "data")
  make_tfrecords.make_tfrecords(str(photos), out, workers=1, split="1,0,0")
  before = {r["image_name"]: r for r in read_csv(f"{out}/face_keypoints.csv")}
  assert all(r["status"] == "ok" for r in before.values())
  assert points(before["a.bmp"]) != points(before["c.bmp"])

  replace_keeping_size_and_time(photos / "a.bmp", bmp_faces[2])  # a.bmp is now c's face
  summary = make_tfrecords.make_tfrecords(str(photos), out, workers=1, split="1,0,0")
  after = {r["image_name"]: r for r in read_csv(f"{out}/face_keypoints.csv")}
  assert points(after["a.bmp"]) == points(before["c.bmp"]) == points(after["c.bmp"])
  assert after["b.bmp"] == before["b.bmp"]
  # The shards hold the new pixels with the new face's points, never the old points.
  written = examples(out)
  np.testing.assert_array_equal(written["a.bmp"][0], written["c.bmp"][0])
  np.testing.assert_array_equal(written["a.bmp"][1], written["c.bmp"][1])
  # Copies are found from the bytes as they are now, and their labels agree.
  report = json.loads(open(f"{out}/cleaning_report.json").read())
  assert report["duplicates"]["same_bytes_images"] == 2
  assert json.loads(open(f"{out}/duplicates.json").read()) == {"groups": [["a.bmp", "c.bmp"]]}
  assert summary["kept"] == 3


def test_predict_also_predicts_again_on_a_photo_replaced_under_its_size_and_time(tmp_path,
                                                                                 bmp_faces):
  model = constant_model(tmp_path / "model.keras")
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "a.bmp").write_bytes(bmp_faces[1])
  (photos / "b.bmp").write_bytes(bmp_faces[2])
  out = tmp_path / "out"
  first = {r.image_name: r for r in predict.predict_images(model, str(photos), str(out))}
  assert first["a_f0.png"].points != first["b_f0.png"].points
  replace_keeping_size_and_time(photos / "a.bmp", bmp_faces[2])
  again = {r.image_name: r for r in predict.predict_images(model, str(photos), str(out))}
  assert again["a_f0.png"].points == first["b_f0.png"].points == again["b_f0.png"].points
  written = {r["image_name"]: r for r in read_csv(out / predict.PREDICTIONS_CSV)}
  assert points(written["a_f0.png"]) == list(first["b_f0.png"].points)


# --- 5. Photos whose names meet each get their own rows ------------------------------------


def test_photos_of_one_stem_are_all_predicted_each_row_naming_its_photo(tmp_path):
  model = constant_model(tmp_path / "model.keras")
  photos = tmp_path / "photos"
  photos.mkdir()
  astronaut = images.load_rgb(os.path.join(SAMPLE_DIR, "astronaut.jpg"))
  for name in ("face.jpg", "face.png", "face.bmp"):
    (photos / name).write_bytes(encode(astronaut, name.split(".")[1].replace("jpg", "JPEG")))
  shutil.copy(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"), photos / "other.jpg")
  out = tmp_path / "out"
  predict.predict_images(model, str(photos), str(out))
  rows = read_csv(out / predict.PREDICTIONS_CSV)
  assert [(r["image_name"], r["photo"], r["status"]) for r in rows] == [
      ("face.bmp_f0.png", "face.bmp", "ok"), ("face.jpg_f0.png", "face.jpg", "ok"),
      ("face.png_f0.png", "face.png", "ok"), ("other_f0.png", "other.jpg", "ok")]
  assert sorted(os.listdir(out / "overlays")) == [
      "face.bmp.png", "face.jpg.png", "face.png.png", "other.jpg.png"]
  faces = json.loads((out / predict.PREDICTIONS_JSON).read_text())["faces"]
  assert [(f["photo"], f["image_name"]) for f in faces] == [(r["photo"], r["image_name"])
                                                             for r in rows]


def test_align_labels_every_photo_of_one_stem_also_those_added_later(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  astronaut = images.load_rgb(os.path.join(SAMPLE_DIR, "astronaut.jpg"))
  (photos / "face.jpg").write_bytes(encode(astronaut, "JPEG"))
  shutil.copy(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"), photos / "other.jpg")
  out = tmp_path / "data"
  make_tfrecords.make_tfrecords(str(photos), str(out), align=64, workers=1, split="1,0,0")
  assert (out / "aligned" / "face_f0.png").exists()

  (photos / "face.png").write_bytes(encode(astronaut, "PNG"))
  (photos / "face.bmp").write_bytes(encode(astronaut[:, ::-1], "BMP"))  # another: mirrored
  make_tfrecords.make_tfrecords(str(photos), str(out), align=64, workers=1, split="1,0,0")
  rows = read_csv(out / "face_keypoints.csv")
  expected = [("face.bmp_f0.png", "face.bmp"), ("face.jpg_f0.png", "face.jpg"),
              ("face.png_f0.png", "face.png"), ("other_f0.png", "other.jpg")]
  assert [(r["image_name"], r["photo"]) for r in rows] == expected
  assert all(r["status"] == "ok" for r in rows)
  # The crops on disk are exactly those the rows name: face_f0.png went with its old name.
  assert sorted(os.listdir(out / "aligned")) == [name for name, _ in expected]
  cleaned = read_csv(out / "cleaned.csv")
  assert [(r["image_name"], r["photo"]) for r in cleaned] == expected
  assert sorted(examples(str(out))) == [name for name, _ in expected]


# --- 7. Long names ---------------------------------------------------------------------------


def test_a_temporary_name_stays_short_and_keeps_the_extension(tmp_path):
  long_name = "x" * 240 + ".weights.h5"
  tmp = files.temporary_name(f"{tmp_path}/{long_name}")
  assert len(os.path.basename(tmp)) < 48 and tmp.endswith(".weights.h5")
  assert files.is_temporary(tmp)
  assert files.temporary_name(f"{tmp_path}/a.png") != files.temporary_name(f"{tmp_path}/b.png")
  files.atomic_write(f"{tmp_path}/{long_name}", b"weights")
  assert os.listdir(tmp_path) == [long_name]
  (tmp_path / os.path.basename(tmp)).write_bytes(b"left by a killed run")
  assert files.remove_temporaries(str(tmp_path)) == 1
  assert os.listdir(tmp_path) == [long_name]


LONG = "n" * 240 + ".jpg"  # 244 bytes: its crop name (247) and overlay name (248) fit in 255
TOO_LONG = "m" * 250 + ".jpg"  # 254 bytes: its crop name (257) and overlay name (258) do not


@pytest.fixture
def long_named_photos(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in (LONG, TOO_LONG):
    shutil.copy(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"), photos / name)
  shutil.copy(os.path.join(SAMPLE_DIR, "astronaut.jpg"), photos / "short.jpg")
  return photos


def test_align_labels_a_long_name_and_gives_a_too_long_one_a_row(tmp_path, long_named_photos):
  out = tmp_path / "data"
  for _ in range(2):  # the rerun too
    make_tfrecords.make_tfrecords(str(long_named_photos), str(out), align=64, workers=1,
                                  split="1,0,0")
    rows = {r["photo"]: r for r in read_csv(out / "face_keypoints.csv")}
    assert set(rows) == {LONG, TOO_LONG, "short.jpg"}
    assert (rows[LONG]["image_name"], rows[LONG]["status"]) == (LONG[:-4] + "_f0.png", "ok")
    assert (rows[TOO_LONG]["image_name"], rows[TOO_LONG]["status"]) == (
        TOO_LONG[:-4] + "_f0.png", "name_too_long")
    assert sorted(os.listdir(out / "aligned")) == sorted([LONG[:-4] + "_f0.png", "short_f0.png"])
  report = json.loads((out / "cleaning_report.json").read_text())
  assert report["kept"] == 2 and report["missing_keypoints_by_status"] == {"name_too_long": 1}


def test_predict_keeps_the_points_of_long_names_on_every_rerun(tmp_path, long_named_photos,
                                                               capsys):
  model = constant_model(tmp_path / "model.keras")
  out = tmp_path / "out"
  first = predict.predict_images(model, str(long_named_photos), str(out))
  (long_named_photos / "new.jpg").write_bytes((long_named_photos / "short.jpg").read_bytes())
  again = predict.predict_images(model, str(long_named_photos), str(out))  # a rerun, one more
  assert sorted(r.photo for r in again) == sorted([LONG, TOO_LONG, "new.jpg", "short.jpg"])
  assert all(r.status == "ok" for r in again) and set(first) < set(again)
  assert sorted(os.listdir(out / "overlays")) == sorted([f"{LONG}.png", "new.jpg.png",
                                                         "short.jpg.png"])
  overlays = {f["photo"]: f["overlay"]
              for f in json.loads((out / predict.PREDICTIONS_JSON).read_text())["faces"]}
  assert overlays[TOO_LONG] is None and overlays[LONG] == f"overlays/{LONG}.png"
  assert "1 overlay(s) not written (name too long)" in capsys.readouterr().out


# --- 4. Training resumed on a rewritten dataset --------------------------------------------


def small_config(data_dir, **overrides):
  config = tiny.get_config()
  config.data_dir = data_dir
  config.image_size = 32
  config.feature_stride = 8
  config.evaluate_at_end = False
  config.num_epochs = 1
  config.update(overrides)
  return config


def build_dataset(tmp_path, out, split):
  """make_tfrecords from a user's CSV over 40 distinct noise images (no annotation needed)."""
  folder = tmp_path / "images"
  if not folder.exists():
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
      (folder / f"i{i:02d}.png").write_bytes(
          encode(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), "PNG"))
      lines.append(",".join([f"i{i:02d}.png", *map(str, rng.uniform(4, 28, 10).round(2))]))
    user_csv(str(tmp_path / "points.csv"), SCHEMA, lines)
  return make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(tmp_path / "points.csv"),
                                       split=split)["splits"]


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "facekp.main", "--config=tiny", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_run_is_not_resumed_on_a_dataset_rewritten_with_other_splits(tmp_path):
  data, workdir = tmp_path / "data", tmp_path / "run"
  first = build_dataset(tmp_path, data, "0.6,0.2,0.2")
  loop.train_and_evaluate(small_config(str(data)), str(workdir))
  recorded = json.loads((workdir / "dataset.json").read_text())
  assert recorded["splits"] == first
  assert build_dataset(tmp_path, data, "0.6,0.2,0.2") == first  # the same dataset again:
  loop.train_and_evaluate(small_config(str(data)), str(workdir))  # resumes (nothing left to do)

  second = build_dataset(tmp_path, data, "0.2,0.6,0.2")
  assert second != first
  flags = [f"--workdir={workdir}", f"--config.data_dir={data}", "--config.image_size=32",
           "--config.feature_stride=8", "--config.evaluate_at_end=false", "--config.num_epochs=1"]
  refused = run_main(*flags)
  assert refused.returncode == 1, refused.stderr
  (line,) = [l for l in refused.stderr.splitlines() if "error:" in l]
  assert f"another version of the dataset {data}" in line
  assert (f"its splits were train {first['train']}, validation {first['validation']}, test "
          f"{first['test']} examples and are train {second['train']}") in line
  assert "--restart" in line and "new --workdir" in line and "Traceback" not in refused.stderr
  assert json.loads((workdir / "dataset.json").read_text()) == recorded  # nothing touched

  restarted = run_main(*flags, "--restart")
  assert restarted.returncode == 0, restarted.stderr
  assert json.loads((workdir / "dataset.json").read_text())["splits"] == second
