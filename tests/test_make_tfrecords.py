"""tools.make_tfrecords end to end: any folder in, a TFDS dataset out, resumable after SIGKILL."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import images
from facekp.core import journal as journal_lib
from facekp.data import annotate
from facekp.data import make_tfrecords
from facekp.data import splits as splits_lib
from facekp.input import input_pipeline
from conftest import SAMPLE_DIR, copies_of, encode
from conftest import user_csv as write_user_csv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def read_json(path):
  with open(path) as f:
    return json.load(f)


def tfds_keypoints(out):
  """{split: {image name: keypoints_px}} as TFDS reads them back."""
  builder = dataset_info.builder(out)
  return {split: {ex["image_name"].decode(): ex["keypoints_px"]
                  for ex in tfds.as_numpy(builder.as_dataset(split=split))}
          for split in builder.info.splits}


def test_help_documents_every_flag():
  """--help of the command as the README runs it (tools/ wraps facekp.data.make_tfrecords, which
  defines the flags) lists every flag with its help."""
  result = subprocess.run([sys.executable, "-m", "tools.make_tfrecords", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-3000:]
  documented = dict(re.findall(r"^  --(?:\[no\])?(\w+): (.*)$", result.stdout, re.M))
  assert set(documented) >= {"images", "out", "align", "landmarks", "workers", "split",
                             "num_shards", "max_faces", "csv", "runner"}, result.stdout
  assert all(len(documented[name]) > 20 for name in ("images", "out", "align", "csv")), documented


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
  schema = dataset_info.load_schema(out)
  assert schema.flip_permutation == (0, 3, 4, 1, 2)
  # Every good image is the astronaut in another form: one group of copies, in one split.
  assert read_json(f"{out}/duplicates.json") == {"groups": [ok]}
  assert report["duplicates"]["groups"] == 1 == summary["duplicate_groups"]
  written = tfds_keypoints(out)
  assert sorted(n for split in written.values() for n in split) == ok
  assert len(written) == 1
  for split, found in written.items():
    for name, keypoints in found.items():
      assert splits_lib.split_of(name, (0.4, 0.3, 0.3), key=splits_lib.group_key(ok[0])) == split
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


def test_a_users_csv_is_read_as_meant(tmp_path, default_schema):
  """A byte-order mark, './x' and an absolute path inside --images are read; NaN points are
  reported as such; a name outside --images and normalised points are refused with a hint."""
  folder = tmp_path / "imgs"
  (folder / "sub").mkdir(parents=True)
  for name in ("a.png", "sub/b.png", "c.png", "d.png"):
    (folder / name).write_bytes(encode(np.zeros((30, 40, 3), np.uint8), "PNG"))
  header = ",".join(("image_name",) + default_schema.csv_point_columns)
  points = ",".join(["5"] * 10)
  user_csv = tmp_path / "mine.csv"
  user_csv.write_bytes((f"\ufeff{header}\n./a.png,{points}\n{folder}/sub/b.png,{points}\n"
                        f"c.png,{','.join(['nan'] * 10)}\n").encode())
  out = tmp_path / "out"
  (out / "aligned" / "sub").mkdir(parents=True)  # debris of a run killed on a full disk
  (out / ".tmp4242.cleaned.csv").write_text("half")
  (out / "aligned" / "sub" / ".tmp4242.x_f0.png").write_bytes(b"half")
  summary = make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv),
                                          split="1,0,0")
  assert summary["kept"] == 2
  report = read_json(f"{out}/cleaning_report.json")
  assert report["missing_keypoints_by_status"] == {"ok_with_blank_or_nan_points": 1}
  assert sorted(tfds_keypoints(str(out))["train"]) == ["a.png", "sub/b.png"]
  assert not (out / ".tmp4242.cleaned.csv").exists()
  assert not (out / "aligned" / "sub" / ".tmp4242.x_f0.png").exists()

  (tmp_path / "a.png").write_bytes((folder / "a.png").read_bytes())
  user_csv.write_text(f"{header}\n../a.png,{points}\n")
  with pytest.raises(ValueError, match="'../a.png' lies outside the image folder"):
    make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv))
  user_csv.write_text(f"{header}\nd.png,{','.join(['0.5', '0.25'] * 5)}\n")
  with pytest.raises(ValueError, match="look like normalised.*--csv_units=normalised"):
    make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv))
  make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv), split="1,0,0",
                                csv_units="normalised")
  np.testing.assert_allclose(tfds_keypoints(str(out))["train"]["d.png"], [[20.0, 7.5]] * 5)


def test_a_second_run_on_the_same_out_is_refused(tmp_path, default_schema):
  folder = tmp_path / "imgs"
  folder.mkdir()
  (folder / "a.png").write_bytes(encode(np.zeros((30, 40, 3), np.uint8), "PNG"))
  user_csv = write_user_csv(tmp_path / "mine.csv", default_schema, ["a.png," + "5," * 9 + "5"])
  out = tmp_path / "out"
  with files.folder_lock(str(out), "--out"):  # another run holds it
    with pytest.raises(files.FolderInUseError, match=f"{out} is in use by pid {os.getpid()}"):
      make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv))
  assert not (out / "face_keypoints.csv").exists() and not (out / "cleaned.csv").exists()
  make_tfrecords.make_tfrecords(str(folder), str(out), csv=str(user_csv), split="1,0,0")


def _process_group(pgid):
  """Process ids of a process group (read from /proc)."""
  members = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[2]) == pgid and fields[0] != "Z":
      members.append(int(pid))
  return members


def start_run(photos, out, chunk_size, commits):
  """make_tfrecords in its own process group, once `commits` chunks are in its journal."""
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={photos}",
             f"--out={out}", "--workers=2", f"--chunk_size={chunk_size}"]
  run = subprocess.Popen(command, cwd=REPO, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  journal = out / annotate.JOURNAL
  while run.poll() is None and (not journal.exists() or
                                journal.read_text().count("#commit") < commits):
    time.sleep(0.005)
  return run


def test_killing_the_run_ends_its_workers_fork_server_and_tracker(tmp_path):
  photos = copies_of(str(tmp_path / "photos"), "astronaut.jpg", 40)
  run = start_run(photos, tmp_path / "out", chunk_size=1, commits=2)
  children = [pid for pid in _process_group(run.pid) if pid != run.pid]
  assert len(children) >= 3  # the fork server, two workers (and the resource tracker)
  run.kill()  # the main process only, as the OOM killer or `kill -9 PID` would
  run.wait()
  deadline = time.time() + 20
  while _process_group(run.pid) and time.time() < deadline:
    time.sleep(0.1)
  assert _process_group(run.pid) == []


def test_align_turns_photos_into_a_dataset_of_crops(tmp_path):
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ["multi_face.jpg", "grace_hopper.jpg"]:
    shutil.copy(os.path.join(SAMPLE_DIR, name), photos / name)
  out = str(photos / "out")  # inside --images: its crops must never be read as input
  make_tfrecords.make_tfrecords(str(photos), out, align=64, workers=2, split="0.5,0.5,0")
  first = read_csv(f"{out}/face_keypoints.csv")
  make_tfrecords.make_tfrecords(str(photos), out, align=64, workers=2, split="0.5,0.5,0")
  assert read_csv(f"{out}/face_keypoints.csv") == first
  assert not any("_f0_f" in r["image_name"] for r in first)
  assert dataset_info.read_metadata(out)["crop"] == "facekp_align_64"
  cleaned = {r["image_name"] for r in read_csv(f"{out}/cleaned.csv")}
  assert "grace_hopper_f0.png" in cleaned and len(cleaned) >= 3
  written = tfds_keypoints(out)
  assert sorted(n for split in written.values() for n in split) == sorted(cleaned)
  builder = dataset_info.builder(out)
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
  run = start_run(photos, out, chunk_size=2, commits=3)
  journal = out / annotate.JOURNAL
  os.killpg(run.pid, signal.SIGKILL)  # the whole process group: main, fork server, workers
  run.wait()
  annotated = journal_lib.Journal(str(journal), annotate.Settings(
      str(photos), str(out), default_schema.mesh_indices).fingerprint()).read()
  assert 0 < len(annotated) < len(names)
  assert not (out / dataset_info.KEYPOINTS_CSV).exists()

  make_tfrecords.make_tfrecords(str(photos), str(out), workers=2, chunk_size=2)  # the rerun
  reference = tmp_path / "reference"
  annotate.annotate_folder(annotate.Settings(str(photos), str(reference),
                                             default_schema.mesh_indices),
                           default_schema, workers=2)
  resumed = (out / dataset_info.KEYPOINTS_CSV).read_text()
  assert [r["image_name"] for r in read_csv(out / dataset_info.KEYPOINTS_CSV)] == names
  assert resumed == (reference / dataset_info.KEYPOINTS_CSV).read_text()
  assert dataset_info.builder(str(out)).info.splits.total_num_examples == len(names)
  # every file as an uninterrupted run writes it (the resumed run took the journaled images'
  # sizes and fingerprints, the uninterrupted one all from its workers)
  uninterrupted = tmp_path / "uninterrupted"
  make_tfrecords.make_tfrecords(str(photos), str(uninterrupted), workers=2, chunk_size=2)
  expected = dataset_files(uninterrupted)
  assert sorted(dataset_files(out)) == sorted(expected)
  assert [name for name, data in dataset_files(out).items() if data != expected[name]] == []


def test_stored_pixels_read_back_as_the_png_dataset_does(tmp_path, default_schema):
  """--image_format=pixels: the same examples, pixel for pixel, as the PNG dataset of the same
  folder, stored as raw uint8 (TFDS Tensor) and read without decoding; mixed sizes refused."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  rng = np.random.default_rng(0)
  names = ["a.png", "b.jpg", "c.bmp"]
  for name, fmt in zip(names, ["PNG", "JPEG", "BMP"]):
    (folder / name).write_bytes(encode(rng.integers(0, 256, (24, 24, 3), np.uint8), fmt))
  user_csv = tmp_path / "points.csv"
  write_user_csv(str(user_csv), default_schema,
                 [f"{n}," + ",".join(["12"] * 10) for n in names])
  outs = {}
  for image_format in ("png", "pixels"):
    outs[image_format] = str(tmp_path / image_format)
    make_tfrecords.make_tfrecords(str(folder), outs[image_format], csv=str(user_csv),
                                  split="1,0,0", image_format=image_format)
  png, pixels = (input_pipeline.load_arrays(outs[f], "train", image_size=24)
                 for f in ("png", "pixels"))
  assert list(png["image_names"]) == list(pixels["image_names"])
  assert sorted(png["image_names"]) == names
  np.testing.assert_array_equal(png["images"], pixels["images"])
  np.testing.assert_array_equal(png["keypoints"], pixels["keypoints"])
  feature = dataset_info.builder(outs["pixels"]).info.features["image"]
  assert isinstance(feature, tfds.features.Tensor) and feature.shape == (24, 24, 3)
  assert input_pipeline.pixels_shape(dataset_info.builder(outs["png"]).info.features) is None
  resized = input_pipeline.load_arrays(outs["pixels"], "train", image_size=16)["images"]
  assert resized.shape == (3, 16, 16, 3)

  (folder / "d.png").write_bytes(encode(rng.integers(0, 256, (20, 24, 3), np.uint8), "PNG"))
  with open(user_csv, "a") as f:
    f.write("d.png," + ",".join(["10"] * 10) + "\n")
  with pytest.raises(ValueError, match="--image_format=pixels stores images of one square size"):
    make_tfrecords.make_tfrecords(str(folder), str(tmp_path / "mixed"), csv=str(user_csv),
                                  split="1,0,0", image_format="pixels")


def sequential_build(images_dir, out, *, align=0, fractions=(0.4, 0.3, 0.3), num_shards=0,
                     monkeypatch):
  """The dataset as make_tfrecords built it before annotation took cleaning's reads: every
  image read and decoded again by cleaning, every record serialised by TFDS, stage after stage
  in this process."""
  from facekp.core import keypoints as keypoints_lib  # pylint: disable=g-import-not-at-top
  from facekp.core import schema as schema_lib  # pylint: disable=g-import-not-at-top
  from facekp.data import shards  # pylint: disable=g-import-not-at-top
  from facekp.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  schema = make_tfrecords.load_or_make_schema(str(out), schema_lib.DEFAULT_MESH_INDICES)
  with annotate.Pool(2) as pool:
    rows, root = make_tfrecords.annotate_or_read(
        sources_lib.make_sources(images_dir, align), str(out), schema, pool, max_faces=10,
        csv=None, chunk_size=0)
  kept, _, split_keys, digests = make_tfrecords.clean_and_report(rows, root, str(out), schema)

  def tfds_serialises(example):
    raise ValueError(f"{example['image_name']}: not written directly")

  with monkeypatch.context() as patch:
    patch.setattr(shards, "encode_example", tfds_serialises)
    shards.write_dataset(str(out), splits_lib.assign_splits(kept, fractions, split_keys), root,
                         schema, num_shards or None, crop=keypoints_lib.crop_method(align),
                         input_size=align or make_tfrecords.common_size(kept), digests=digests)


def dataset_files(out):
  """{relative path: bytes} of every file make_tfrecords writes (not its journal or lock)."""
  found = {}
  for folder, _, names in os.walk(out):
    for name in names:
      if name not in (annotate.JOURNAL, files.LOCK_FILE):
        path = os.path.join(folder, name)
        found[os.path.relpath(path, out)] = open(path, "rb").read()
  return found


@pytest.mark.parametrize("align", [0, 64])
def test_the_overlapped_build_writes_what_the_sequential_build_wrote(image_folder, tmp_path,
                                                                     monkeypatch, align):
  """CSV, cleaned CSV, reports, shards and TFDS metadata byte for byte as the sequential build
  writes them: on every stored form and bad file, and on photos of several faces (--align);
  and again on a rerun, which takes the journal's reads (sources hashed, crops hashed again)."""
  images_dir, num_shards = image_folder, 0 if align else 3
  os.makedirs(os.path.join(image_folder, "sample"))
  for name in os.listdir(SAMPLE_DIR):  # faces of other people: groups in every split
    if name.endswith(".jpg") and not align:
      shutil.copy(os.path.join(SAMPLE_DIR, name), os.path.join(image_folder, "sample", name))
  if align:
    images_dir = str(tmp_path / "photos")
    os.makedirs(images_dir)
    for name in ("multi_face.jpg", "grace_hopper.jpg", "astronaut.jpg"):
      shutil.copy(os.path.join(SAMPLE_DIR, name), os.path.join(images_dir, name))
    shutil.copy(os.path.join(image_folder, "face.png"), os.path.join(images_dir, "astronaut.png"))
  out, reference = tmp_path / "out", tmp_path / "reference"
  make_tfrecords.make_tfrecords(images_dir, str(out), align=align, workers=2, split="0.4,0.3,0.3",
                                num_shards=num_shards)
  sequential_build(images_dir, reference, align=align, num_shards=num_shards,
                   monkeypatch=monkeypatch)
  expected = dataset_files(reference)
  assert {"face_keypoints.csv", "cleaned.csv", "cleaning_report.json", "duplicates.json",
          "dataset_info.json", "features.json", "schema.json"} < set(expected)
  assert len([name for name in expected if ".tfrecord-" in name]) >= 2
  written = dataset_files(out)
  assert sorted(written) == sorted(expected)
  assert [name for name in expected if written[name] != expected[name]] == []
  make_tfrecords.make_tfrecords(images_dir, str(out), align=align, workers=2, split="0.4,0.3,0.3",
                                num_shards=num_shards)
  rewritten = dataset_files(out)
  assert [name for name in expected if rewritten[name] != expected[name]] == []
