"""tools.make_tfrecords end to end: any folder in, a TFDS dataset out, resumable after SIGKILL."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pytest
import tensorflow_datasets as tfds

from facekp import annotate
from facekp import dataset
from facekp import images
from tools import make_tfrecords
from conftest import SAMPLE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def read_json(path):
  with open(path) as f:
    return json.load(f)


def tfds_keypoints(out):
  """{split: {image name: keypoints_px}} as TFDS reads them back."""
  builder = dataset.builder(out)
  return {split: {ex["image_name"].decode(): ex["keypoints_px"]
                  for ex in tfds.as_numpy(builder.as_dataset(split=split))}
          for split in builder.info.splits}


def test_help_documents_every_flag():
  module_flags = flags.FLAGS.get_flags_for_module(make_tfrecords)
  assert {f.name for f in module_flags} >= {"images", "out", "align", "landmarks", "workers",
                                            "split", "num_shards", "max_faces", "csv"}
  assert all(len(f.help) > 20 for f in module_flags)


def test_a_folder_with_bad_inputs_becomes_a_dataset(image_folder, image_files, tmp_path):
  out = str(tmp_path / "out")
  summary = make_tfrecords.make_tfrecords(image_folder, out, workers=2, split="0.4,0.3,0.3")
  rows = read_csv(f"{out}/face_keypoints.csv")
  assert {r["image_name"]: r["status"] for r in rows} == {
      name: status for name, (_, status) in image_files.items()}
  ok = sorted(name for name, (_, status) in image_files.items() if status == "ok")
  report = read_json(f"{out}/cleaning_report.json")
  assert report["kept"] == len(ok) == summary["kept"]
  assert report["dropped"]["missing_keypoints"] == len(image_files) - len(ok)
  assert report["missing_keypoints_by_status"]["truncated"] == 2
  cleaned = {r["image_name"]: r for r in read_csv(f"{out}/cleaned.csv")}
  assert sorted(cleaned) == ok
  schema = dataset.load_schema(out)
  assert schema.flip_permutation == (0, 3, 4, 1, 2)
  # Every good image is the astronaut in another form: one group of copies, in one split.
  assert read_json(f"{out}/duplicates.json") == {"groups": [ok]}
  assert report["duplicates"]["groups"] == 1 == summary["duplicate_groups"]
  written = tfds_keypoints(out)
  assert sorted(n for split in written.values() for n in split) == ok
  assert len(written) == 1
  for split, found in written.items():
    for name, keypoints in found.items():
      assert dataset.split_of(name, (0.4, 0.3, 0.3), key=dataset.group_key(ok[0])) == split
      expected = [float(cleaned[name][c]) for c in schema.csv_point_columns]
      np.testing.assert_allclose(keypoints.ravel(), expected, rtol=1e-6)

  journal = open(f"{out}/{annotate.JOURNAL}").read()
  again = make_tfrecords.make_tfrecords(image_folder, out, workers=2, split="0.4,0.3,0.3")
  assert open(f"{out}/{annotate.JOURNAL}").read() == journal  # nothing annotated twice
  assert again["splits"] == summary["splits"]


def test_a_users_csv_skips_annotation(tmp_path, default_schema):
  folder = tmp_path / "imgs"
  folder.mkdir()
  shutil.copy(os.path.join(SAMPLE_DIR, "astronaut.jpg"), folder / "a.jpg")
  user_csv = tmp_path / "mine.csv"
  user_csv.write_text("image_name,point_1_x,point_1_y\na.jpg,1,2\n")
  with pytest.raises(ValueError, match="missing required column.*point_2_x"):
    make_tfrecords.make_tfrecords(str(folder), str(tmp_path / "out"), csv=str(user_csv))
  user_csv.write_text(",".join(("image_name",) + default_schema.csv_point_columns) +
                      "\na.jpg," + ",".join(["100"] * 10) + "\nb.jpg," + ",".join(["9"] * 10))
  summary = make_tfrecords.make_tfrecords(str(folder), str(tmp_path / "out"),
                                          csv=str(user_csv), split="1,0,0")
  assert summary["dropped"]["missing_file"] == 1
  assert not os.path.exists(tmp_path / "out" / annotate.JOURNAL)
  (keypoints,) = tfds_keypoints(str(tmp_path / "out"))["train"].values()
  np.testing.assert_array_equal(keypoints, np.full((5, 2), 100.0))


def test_align_turns_photos_into_a_dataset_of_crops(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ["multi_face.jpg", "grace_hopper.jpg"]:
    shutil.copy(os.path.join(SAMPLE_DIR, name), photos / name)
  out = str(tmp_path / "out")
  make_tfrecords.make_tfrecords(str(photos), out, align=64, workers=2, split="0.5,0.5,0")
  cleaned = {r["image_name"] for r in read_csv(f"{out}/cleaned.csv")}
  assert "grace_hopper_f0.png" in cleaned and len(cleaned) >= 3
  written = tfds_keypoints(out)
  assert sorted(n for split in written.values() for n in split) == sorted(cleaned)
  builder = dataset.builder(out)
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      np.testing.assert_array_equal(
          ex["image"], images.load_rgb(f"{out}/aligned/{ex['image_name'].decode()}"))


def test_a_run_killed_mid_annotation_resumes_without_loss_or_repeats(tmp_path, default_schema):
  photos = tmp_path / "photos"
  for copy in range(12):
    shutil.copytree(SAMPLE_DIR, photos / f"copy{copy:02d}", ignore=shutil.ignore_patterns("*.md"))
  names = images.list_images(str(photos))
  out = tmp_path / "out"
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={photos}",
             f"--out={out}", "--workers=2", "--chunk_size=2"]
  run = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  journal = out / annotate.JOURNAL
  while run.poll() is None and (not journal.exists() or journal.read_text().count("#commit") < 3):
    time.sleep(0.005)
  os.killpg(run.pid, signal.SIGKILL)  # the whole process group: main, fork server, workers
  run.wait()
  annotated = annotate.Journal(str(journal), annotate.Settings(
      str(photos), str(out), default_schema.mesh_indices).fingerprint()).read()
  assert 0 < len(annotated) < len(names)
  assert not (out / dataset.KEYPOINTS_CSV).exists()

  make_tfrecords.make_tfrecords(str(photos), str(out), workers=2, chunk_size=2)  # the rerun
  reference = tmp_path / "reference"
  annotate.annotate_folder(annotate.Settings(str(photos), str(reference),
                                             default_schema.mesh_indices),
                           default_schema, workers=2)
  resumed = (out / dataset.KEYPOINTS_CSV).read_text()
  assert [r["image_name"] for r in read_csv(out / dataset.KEYPOINTS_CSV)] == names
  assert resumed == (reference / dataset.KEYPOINTS_CSV).read_text()
  assert dataset.builder(str(out)).info.splits.total_num_examples == len(names)
