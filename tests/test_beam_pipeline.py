"""make_tfrecords --runner=beam: the local pool's files and examples, and no half dataset."""
import json
import os
import shutil

import numpy as np
import pytest

beam_pipeline = pytest.importorskip(
    "facekp.data.beam_runner", reason="Apache Beam is not installed (pip install -e '.[beam]')")

from facekp.core import dataset_info
from facekp.data import make_tfrecords
from facekp.data import shards
from conftest import SAMPLE_DIR

_FILES = ("face_keypoints.csv", "cleaned.csv", "cleaning_report.json", "duplicates.json",
          "schema.json", "features.json", "dataset_info.json")


def folder_of(tmp_path, image_files, samples, bad):
  """Sample photos and some of conftest's bad files in one folder."""
  folder = tmp_path / "images"
  folder.mkdir()
  for name in samples:
    shutil.copy(os.path.join(SAMPLE_DIR, name), folder / name)
  for name in bad:
    (folder / name).write_bytes(image_files[name][0])
  return str(folder)


def decoded(out):
  """{split: [example as NumPy, in reading order]} as TFDS reads the dataset."""
  builder = dataset_info.builder(out)
  return {split: list(builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator())
          for split in builder.info.splits}


def assert_same_dataset(beam_out, local_out):
  for name in _FILES:
    with open(f"{beam_out}/{name}", "rb") as b, open(f"{local_out}/{name}", "rb") as l:
      assert b.read() == l.read(), name
  shards = sorted(n for n in os.listdir(local_out) if ".tfrecord-" in n)
  assert shards and sorted(n for n in os.listdir(beam_out) if ".tfrecord-" in n) == shards
  for name in shards:  # same examples, same order, same bytes
    with open(f"{beam_out}/{name}", "rb") as b, open(f"{local_out}/{name}", "rb") as l:
      assert b.read() == l.read(), name
  got, expected = decoded(beam_out), decoded(local_out)
  assert got.keys() == expected.keys()
  for split in expected:
    assert [e["image_name"] for e in got[split]] == [e["image_name"] for e in expected[split]]
    for g, e in zip(got[split], expected[split]):
      for key in e:
        np.testing.assert_array_equal(g[key], e[key])


def test_beam_on_two_worker_processes_equals_the_local_pool(tmp_path, image_files):
  folder = folder_of(tmp_path, image_files, ["astronaut.jpg", "grace_hopper.jpg",
                                             "0-f1-su-ph.jpg", "45-m7-di-ph.jpg"],
                     ["blank.png", "notes.png", "truncated.jpg"])
  # A copy whose own name hashes to train and grace_hopper's to test: both must go to one split.
  shutil.copy(f"{folder}/grace_hopper.jpg", f"{folder}/hopper.jpg")
  local = make_tfrecords.make_tfrecords(folder, str(tmp_path / "local"), workers=2,
                                        split="0.4,0.3,0.3")
  summary = make_tfrecords.make_tfrecords(
      folder, str(tmp_path / "beam"), split="0.4,0.3,0.3", runner="beam",
      beam_options="direct_num_workers=2,direct_running_mode=multi_processing")
  assert summary["kept"] == local["kept"] == 5 and summary["splits"] == local["splits"]
  assert summary["dropped"] == local["dropped"]
  assert summary["duplicate_groups"] == local["duplicate_groups"] == 1
  with open(tmp_path / "beam" / "duplicates.json") as f:
    assert json.load(f)["groups"] == [["grace_hopper.jpg", "hopper.jpg"]]
  split_of = {e["image_name"]: split for split, examples in decoded(str(tmp_path / "beam")).items()
              for e in examples}
  assert split_of[b"grace_hopper.jpg"] == split_of[b"hopper.jpg"]
  assert_same_dataset(str(tmp_path / "beam"), str(tmp_path / "local"))
  assert not os.path.exists(str(tmp_path / "beam") + beam_pipeline.STAGING_SUFFIX)


def test_beam_with_align_equals_the_local_pool(tmp_path, image_files):
  folder = folder_of(tmp_path, image_files, ["multi_face.jpg", "astronaut.jpg"], ["blank.png"])
  options = dict(align=96, max_faces=3, split="0.5,0.25,0.25", num_shards=2)
  make_tfrecords.make_tfrecords(folder, str(tmp_path / "local"), workers=1, **options)
  make_tfrecords.make_tfrecords(folder, str(tmp_path / "beam"), runner="beam",
                                beam_options="direct_running_mode=in_memory", **options)
  assert_same_dataset(str(tmp_path / "beam"), str(tmp_path / "local"))
  crops = sorted(os.listdir(tmp_path / "local" / "aligned"))
  assert len(crops) >= 3 and sorted(os.listdir(tmp_path / "beam" / "aligned")) == crops


def test_a_failed_run_leaves_no_dataset_and_a_rerun_completes(tmp_path, image_files,
                                                               monkeypatch):
  folder = folder_of(tmp_path, image_files, ["astronaut.jpg", "grace_hopper.jpg"], [])
  out = str(tmp_path / "out")
  in_process = dict(runner="beam", beam_options="direct_running_mode=in_memory")

  def disk_full(*args):
    raise OSError("No space left on device")

  monkeypatch.setattr(shards, "write_split_shard", disk_full)
  with pytest.raises(Exception, match="No space left"):
    make_tfrecords.make_tfrecords(folder, out, **in_process)
  assert not os.path.exists(out)  # nothing that looks like a dataset
  staging = out + beam_pipeline.STAGING_SUFFIX
  assert os.path.exists(f"{staging}/face_keypoints.csv")
  assert not os.path.exists(f"{staging}/dataset_info.json")
  monkeypatch.undo()

  summary = make_tfrecords.make_tfrecords(folder, out, **in_process)
  assert summary["kept"] == 2 and not os.path.exists(staging)
  assert sum(len(examples) for examples in decoded(out).values()) == 2

  before = sorted(os.listdir(out))
  with pytest.raises(ValueError, match="is not empty.*choose a new --out"):
    make_tfrecords.make_tfrecords(folder, out, **in_process)
  assert sorted(os.listdir(out)) == before


def test_bad_pipeline_options_are_a_clear_error():
  with pytest.raises(ValueError, match="'direct_num_workers' is not KEY=VALUE"):
    beam_pipeline.parse_options("direct_num_workers")
