"""make_tfrecords on several folders pooled into one dataset (--images=A,B --align=0,64): real
MediaPipe on the sample photos, real TFRecords, a SIGKILLed run, reruns on changed sources.

The inputs, built once: `photos` (two sample photos) through --align=64 as one folder, whose crops
become `in/crops`; `in/raw` (four sample photos, one of them grace_hopper.jpg again, one in a
subfolder) through --align=64; `more/crops` (a copy of one crop under another name) as it is."""
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

import facekp
from facekp.core import dataset_info
from facekp.core import images
from facekp.core import journal as journal_lib
from facekp.data import annotate
from facekp.data import make_tfrecords
from facekp.data import sources
from conftest import SAMPLE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIGN = 64
SPLIT = "0.5,0.5,0"
RAW_PHOTOS = ("grace_hopper.jpg", "0-f15-hao-ph.jpg", "45-m7-di-ph.jpg", "sub/0-f1-su-ph.jpg")


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def split_of_names(out):
  """{image name: split} as TFDS reads the shards back."""
  builder = dataset_info.builder(out)
  return {ex["image_name"].decode(): split for split in builder.info.splits
          for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def dataset_files(out):
  """{path: bytes} of a dataset folder, links followed, but its lock and journals (a journal
  lists photos in the order workers finished them)."""
  found = {}
  for where, folders, names in os.walk(out, followlinks=True):
    folders[:] = [f for f in folders if f != annotate.JOURNALS_DIR]
    for name in names:
      if name != ".facekp.lock" and name != annotate.JOURNAL:
        path = os.path.join(where, name)
        with open(path, "rb") as f:
          found[os.path.relpath(path, out)] = f.read()
  return found


def copy_photo(name, folder):
  os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
  shutil.copy(os.path.join(SAMPLE_DIR, os.path.basename(name)), os.path.join(folder, name))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The inputs, a dataset of one folder and the pooled reference dataset (uninterrupted)."""
  root = tmp_path_factory.mktemp("multi")
  photos = str(root / "photos")
  for name in ("astronaut.jpg", "grace_hopper.jpg"):
    copy_photo(name, photos)
  single = str(root / "single")
  single_summary = make_tfrecords.make_tfrecords(photos, single, align=ALIGN, workers=2,
                                                 split=SPLIT)
  crops, raw, more = str(root / "in" / "crops"), str(root / "in" / "raw"), str(root / "more" /
                                                                               "crops")
  shutil.copytree(f"{single}/{annotate.ALIGNED_DIR}", crops)
  for name in RAW_PHOTOS:
    copy_photo(name, raw)
  os.makedirs(more)
  shutil.copy(f"{crops}/astronaut_f0.png", f"{more}/copy_of_astronaut.png")
  folders, aligns = [crops, raw, more], [0, ALIGN, 0]
  pooled = str(root / "pooled")
  summary = facekp.make_dataset(images=folders, out=pooled, align=aligns, workers=2, split=SPLIT)
  return {"root": root, "photos": photos, "single": single, "single_summary": single_summary,
          "folders": folders, "aligns": aligns, "pooled": pooled, "summary": summary}


def test_images_and_align_values_parse_and_refuse_a_wrong_count():
  assert sources.split_folders("a,b") == ["a", "b"] and sources.split_folders("a") == ["a"]
  assert sources.parse_align("128") == 128 and sources.parse_align("0,128") == [0, 128]
  assert sources.as_lists(["a", "b"], 128) == (["a", "b"], [128, 128])  # one value for all
  assert sources.as_lists("a,b", [0]) == (["a,b"], [0])  # a str is one folder, commas and all
  assert sources.source_names(["/x/a/raw", "/x/b/raw", "/x/crops"]) == ["a_raw", "b_raw", "crops"]
  for call, message in [
      (lambda: sources.as_lists(["a", "b"], [0, 64, 128]),
       "--align=0,64,128: 3 values for 2 --images folders: give one value for all"),
      (lambda: sources.parse_align("64,x"), "--align=64,x: must be an integer, or integers"),
      (lambda: sources.split_folders("a,,b"), "--images=a,,b: an empty folder name"),
      (lambda: sources.make_sources(["/tmp", "/tmp/"], 0), "names the folder /tmp 2 times")]:
    with pytest.raises(ValueError, match=re.escape(message)) as error:
      call()
    assert "\n" not in str(error.value)


def test_a_wrong_count_of_align_values_is_one_line_from_the_command(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "tools.make_tfrecords", f"--images={tmp_path}/a,{tmp_path}/b",
       "--align=0,64,128", f"--out={tmp_path}/out"], cwd=REPO, capture_output=True, text=True,
      timeout=300, env={**os.environ, "PYTHONPATH": REPO})
  lines = [line for line in result.stderr.splitlines() if "error:" in line]
  assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
  assert "--align=0,64,128: 3 values for 2 --images folders" in lines[0]
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_one_folder_keeps_its_names_and_layout_given_as_a_list_too(built):
  """A dataset of one folder is what it always was: names as in the folder, crops in
  OUT/aligned, one journal; a list of one folder and one --align writes the same bytes."""
  single = built["single"]
  before = dataset_files(single)
  journal = open(f"{single}/{annotate.JOURNAL}", "rb").read()
  assert sorted(before) == sorted([
      "aligned/astronaut_f0.png", "aligned/grace_hopper_f0.png", "cleaned.csv",
      "cleaning_report.json", "dataset_info.json", "duplicates.json", "face_keypoints.csv",
      "features.json", "metadata.json", "schema.json"] + [
          name for name in before if name.startswith("facekp-")])
  assert [r["image_name"] for r in read_csv(f"{single}/face_keypoints.csv")] == [
      "astronaut_f0.png", "grace_hopper_f0.png"]
  assert dataset_info.read_metadata(single)["crop"] == f"facekp_align_{ALIGN}"
  again = make_tfrecords.make_tfrecords([built["photos"]], single, align=[ALIGN], workers=2,
                                        split=SPLIT)
  assert dataset_files(single) == before
  assert open(f"{single}/{annotate.JOURNAL}", "rb").read() == journal  # nothing labelled again
  assert again["splits"] == built["single_summary"]["splits"] and "sources" not in again


def test_pooled_sources_have_unique_names_and_copies_across_them_share_a_split(built):
  pooled, (crops, raw, more) = built["pooled"], built["folders"]
  names = [r["image_name"] for r in read_csv(f"{pooled}/face_keypoints.csv")]
  assert len(names) == len(set(names))
  assert {n.split("/")[0] for n in names} == {"in_crops", "raw", "more_crops"}
  assert {"in_crops/astronaut_f0.png", "in_crops/grace_hopper_f0.png", "raw/grace_hopper_f0.png",
          "raw/sub/0-f1-su-ph_f0.png", "more_crops/copy_of_astronaut.png"} <= set(names)
  photos = {r["image_name"]: r["photo"] for r in read_csv(f"{pooled}/face_keypoints.csv")}
  assert photos["raw/sub/0-f1-su-ph_f0.png"] == "raw/sub/0-f1-su-ph.jpg"
  assert built["summary"]["sources"] == {"in_crops": 2, "raw": 4, "more_crops": 1}
  recorded = json.load(open(f"{pooled}/{sources.SOURCES_FILE}"))["sources"]
  assert [(s["name"], s["folder"], s["align"]) for s in recorded] == [
      ("in_crops", crops, 0), ("raw", raw, ALIGN), ("more_crops", more, 0)]
  # Crops of the raw photos in OUT/aligned/raw; the stored crops linked; every name under aligned.
  aligned = f"{pooled}/{annotate.ALIGNED_DIR}"
  assert os.path.realpath(f"{aligned}/in_crops") == os.path.realpath(crops)
  assert not os.path.islink(f"{aligned}/raw")
  assert os.path.isfile(f"{aligned}/raw/grace_hopper_f0.png")
  assert dataset_info.read_metadata(pooled)["crop"] == "as_stored"  # not all facekp's crops
  # Both sources in the shards, each image as its file under OUT/aligned.
  builder = dataset_info.builder(pooled)
  written = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      written[ex["image_name"].decode()] = split
      np.testing.assert_array_equal(
          ex["image"], images.load_rgb(f"{aligned}/{ex['image_name'].decode()}"))
  assert sorted(written) == sorted(r["image_name"] for r in read_csv(f"{pooled}/cleaned.csv"))
  assert {n.split("/")[0] for n in written} == {"in_crops", "raw", "more_crops"}
  # The same file in two sources (a crop and the crop of its photo; a copy under another name)
  # is one group of copies, in one split.
  groups = json.load(open(f"{pooled}/duplicates.json"))["groups"]
  assert ["in_crops/grace_hopper_f0.png", "raw/grace_hopper_f0.png"] in groups
  assert ["in_crops/astronaut_f0.png", "more_crops/copy_of_astronaut.png"] in groups
  for group in groups:
    assert len({written[name] for name in group}) == 1, (group, written)


def test_a_rerun_reuses_every_label_and_a_changed_list_of_sources_is_handled(built, tmp_path):
  out = str(tmp_path / "pooled")
  shutil.copytree(built["pooled"], out, symlinks=True)
  journals = {name: open(f"{out}/journals/{name}", "rb").read()
              for name in os.listdir(f"{out}/journals")}
  assert sorted(journals) == ["in_crops.journal", "more_crops.journal", "raw.journal"]
  before = dataset_files(out)
  folders, aligns = built["folders"], built["aligns"]
  make_tfrecords.make_tfrecords(folders, out, align=aligns, workers=2, split=SPLIT)
  assert dataset_files(out) == before
  same = lambda: {n: open(f"{out}/journals/{n}", "rb").read() for n in journals} == journals
  assert same()  # nothing labelled again
  # A source with another --align: refused before any work, saying what to delete.
  with pytest.raises(ValueError, match=r"source 'raw' was labelled in .* with other settings .*"
                     r"delete .*/journals/raw\.journal and .*/aligned/raw to label it again"):
    make_tfrecords.make_tfrecords(folders, out, align=[0, 128, 0], workers=2, split=SPLIT)
  # One folder into a pooled dataset, several into a dataset of one: refused.
  with pytest.raises(ValueError, match="holds a dataset pooled from several --images folders"):
    make_tfrecords.make_tfrecords(folders[1], out, align=ALIGN)
  with pytest.raises(ValueError, match="holds a dataset of one --images folder"):
    make_tfrecords.make_tfrecords(folders, built["single"], align=aligns)
  assert same() and dataset_files(out) == before
  # A source left out: the others' labels are reused; its own stay for a later run.
  summary = make_tfrecords.make_tfrecords([folders[0], folders[2]], out, align=0, workers=2,
                                          split=SPLIT)
  assert summary["sources"] == {"in_crops": 2, "more_crops": 1} and same()
  assert {r["image_name"].split("/")[0] for r in read_csv(f"{out}/cleaned.csv")} == {
      "in_crops", "more_crops"}
  assert {name.split("/")[0] for name in split_of_names(out)} == {"in_crops", "more_crops"}
  assert os.path.isfile(f"{out}/{annotate.ALIGNED_DIR}/raw/grace_hopper_f0.png")


def start_run(folders, aligns, out, source, commits):
  """The command on the pooled sources in its own process group, once `commits` chunks of
  `source` are in its journal."""
  command = [sys.executable, "-m", "tools.make_tfrecords", f"--images={','.join(folders)}",
             f"--align={','.join(map(str, aligns))}", f"--out={out}", "--workers=2",
             "--chunk_size=1", f"--split={SPLIT}"]
  run = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO})
  journal = f"{out}/{annotate.JOURNALS_DIR}/{source}.journal"
  while run.poll() is None and (not os.path.exists(journal) or
                                open(journal).read().count("#commit") < commits):
    time.sleep(0.005)
  return run, journal


def test_a_pooled_run_killed_mid_annotation_ends_as_an_uninterrupted_one(built, tmp_path):
  out = str(tmp_path / "killed")
  folders, aligns = built["folders"], built["aligns"]
  run, journal = start_run(folders, aligns, out, "raw", commits=1)
  os.killpg(run.pid, signal.SIGKILL)  # main, fork server and workers, in the second source
  run.wait()
  done = journal_lib.Journal(journal, journal_lib.recorded_fingerprint(journal)).read()
  assert 0 < len(done) < len(RAW_PHOTOS), "the kill came after the raw photos were labelled"
  assert not os.path.exists(f"{out}/dataset_info.json")
  make_tfrecords.make_tfrecords(folders, out, align=aligns, workers=2, split=SPLIT)  # the rerun
  resumed, reference = dataset_files(out), dataset_files(built["pooled"])
  assert sorted(resumed) == sorted(reference)
  for name in reference:
    assert resumed[name] == reference[name], name
