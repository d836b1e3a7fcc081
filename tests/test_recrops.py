"""Re-crops (make_tfrecords --recrops): jittered crops of each face cut from the photo again and
labelled by real Face Mesh on their own pixels, kept with their face and out of validation/test."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import images
from facekp.core import journal as journal_lib
from facekp.core.keypoint_csv import KeypointRow
from facekp.data import align
from facekp.data import face_mesh as face_mesh_lib
from facekp.data import faces
from facekp.data import make_tfrecords
from facekp.data import splits
from conftest import SAMPLE_DIR

SIZE = 96


@pytest.fixture(scope="module")
def finder():
  with face_mesh_lib.FaceMesh(faces.search_limit(1)) as photo_mesh, \
      face_mesh_lib.FaceMesh(1) as crop_mesh:
    yield faces.Finder(photo_mesh, crop_mesh)


@pytest.fixture(scope="module")
def astronaut(finder):
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, "astronaut.jpg"))
  face, = faces.aligned_faces(finder, "astronaut", photo, SIZE, 1)
  return photo, face


def relative_turn_and_scale(face_matrix, recrop_matrix):
  """(degrees, scale) of the re-crop's frame against the face's."""
  linear = recrop_matrix[:, :2] @ np.linalg.inv(face_matrix[:, :2])
  return np.degrees(np.arctan2(linear[1, 0], linear[0, 0])), np.sqrt(np.linalg.det(linear))


def test_each_recrop_is_a_jittered_cut_of_the_photo_labelled_by_face_mesh(finder, astronaut):
  photo, face = astronaut
  recrops = faces.recrops(finder.crop_mesh, photo, face, 4, SIZE)
  assert [r.name for r in recrops] == [f"astronaut_f0_r{j}.png" for j in range(1, 5)]
  turns = []
  for recrop in recrops:
    assert recrop.status == "ok" and recrop.crop.shape == (SIZE, SIZE, 3)
    # The label is the teacher's on these very pixels, not the face's points carried over.
    np.testing.assert_array_equal(recrop.landmarks, finder.crop_mesh.detect(recrop.crop)[0])
    carried = align.transform_points(
        recrop.matrix, align.transform_points(align.invert(face.matrix), face.landmarks))
    gap = np.linalg.norm(carried - recrop.landmarks, axis=1).mean()
    assert 0 < gap < 0.03 * SIZE
    degrees, scale = relative_turn_and_scale(face.matrix, recrop.matrix)
    assert abs(degrees) <= faces.RECROP_ROTATION + 0.5
    assert 1 / (1 + faces.RECROP_SCALE) - 0.02 <= scale <= 1 / (1 - faces.RECROP_SCALE) + 0.02
    turns.append(degrees)
    # Pixels: the face crop warped into the re-crop's frame shows what the re-crop shows, where
    # it reaches (pixel centres whose source lies 2 px inside the face crop).
    relative = recrop.matrix @ np.vstack([align.invert(face.matrix), [0, 0, 1]])
    moved = align.warp_to_square(face.crop, relative, SIZE)
    centres = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE)), -1).reshape(-1, 2) + 0.5
    source = align.transform_points(align.invert(relative), centres)
    inside = ((source > 2) & (source < SIZE - 2)).all(axis=1).reshape(SIZE, SIZE)
    assert inside.mean() > 0.5
    difference = np.abs(moved.astype(int) - recrop.crop.astype(int))[inside].mean()
    assert difference < 6, difference
    assert np.abs(recrop.crop.astype(int) - face.crop.astype(int)).mean() > 10  # really moved
  assert max(map(abs, turns)) > 2  # jittered, not all the face's own frame


def test_recrops_are_the_same_in_every_run_and_none_for_a_face_without_label(finder, astronaut):
  photo, face = astronaut
  first = faces.recrops(finder.crop_mesh, photo, face, 2, SIZE)
  again = faces.recrops(finder.crop_mesh, photo, face, 2, SIZE)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.crop, b.crop)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
  assert faces.recrops(finder.crop_mesh, photo, face._replace(status="no_face"), 2, SIZE) == []
  assert faces.recrops(finder.crop_mesh, photo, face, 0, SIZE) == []


def test_recrop_names_group_with_their_face_and_stay_out_of_validation_and_test():
  assert splits.recrop_name("dir/a_f1.png", 3) == "dir/a_f1_r3.png"
  assert splits.is_recrop("dir/a_f1_r3.png") and not splits.is_recrop("dir/a_f1.png")
  assert not splits.is_recrop("dir/a_r3.png")  # a photo of that name, not a re-crop
  assert splits.recropped_face("dir/a_f1_r3.png") == "dir/a_f1.png"
  assert splits.group_key("dir/a_f1_r3.png") == splits.group_key("dir/a_f1.png") == "dir/a"
  assert faces.is_face_of("dir/a_f1_r3.png", "dir/a")
  row = lambda name: KeypointRow(name, 96, 96, (1.0,) * 10, "ok")
  rows = [row(f"p{i}_f0{suffix}.png") for i in range(40) for suffix in ("", "_r1", "_r2")]
  # p0's face is a copy of p1's: both follow p1's key, and so do p0's re-crops.
  by_split = splits.assign_splits(rows, (0.5, 0.3, 0.2), {"p0_f0.png": "p1", "p1_f0.png": "p1"})
  split_of = {r.image_name: s for s, members in by_split.items() for r in members}
  for i in range(40):
    face = f"p{i}_f0.png"
    if split_of[face] == "train":
      assert split_of[f"p{i}_f0_r1.png"] == split_of[f"p{i}_f0_r2.png"] == "train"
    else:
      assert f"p{i}_f0_r1.png" not in split_of and f"p{i}_f0_r2.png" not in split_of
  assert split_of["p0_f0.png"] == split_of["p1_f0.png"]
  assert {split_of[f"p{i}_f0.png"] for i in range(40)} == set(splits.SPLITS)


def shard_names(out):
  builder = dataset_info.builder(out)
  return {split: sorted(ex["image_name"].decode()
                        for ex in tfds.as_numpy(builder.as_dataset(split=split)))
          for split in builder.info.splits}


def test_make_tfrecords_recrops_train_faces_only_and_reruns_to_the_same_files(tmp_path):
  photos = tmp_path / "photos"
  os.makedirs(photos)
  for name in ("astronaut.jpg", "grace_hopper.jpg", "45-m7-di-ph.jpg", "0-f15-hao-ph.jpg"):
    shutil.copy(os.path.join(SAMPLE_DIR, name), photos / name)
  out = str(tmp_path / "out")
  summary = make_tfrecords.make_tfrecords(str(photos), out, align=SIZE, recrops=2, workers=2,
                                          split="0.5,0.5,0")
  names = shard_names(out)
  train_faces = [n for n in names["train"] if not splits.is_recrop(n)]
  assert train_faces and names["validation"]
  assert names["train"] == sorted(train_faces + [splits.recrop_name(n, j) for n in train_faces
                                                 for j in (1, 2)])
  assert not any(splits.is_recrop(n) for n in names["validation"])
  assert summary["recrops"] == {"train": 2 * len(train_faces),
                                "left_out_of_validation_and_test": 2 * len(names["validation"])}
  for name in names["train"] + names["validation"]:
    assert os.path.exists(f"{out}/aligned/{name}")
  with open(f"{out}/{dataset_info.DUPLICATES_JSON}") as f:
    assert not any(splits.is_recrop(n) for group in json.load(f)["groups"] for n in group)
  before = {n: pathlib.Path(out, n).read_bytes() for n in os.listdir(out)
            if n.endswith((".csv", ".json")) or ".tfrecord" in n}
  again = make_tfrecords.make_tfrecords(str(photos), out, align=SIZE, recrops=2, workers=2,
                                        split="0.5,0.5,0")
  assert again["splits"] == summary["splits"]
  assert {n: pathlib.Path(out, n).read_bytes() for n in before} == before
  with pytest.raises(journal_lib.SettingsChanged, match="delete it to annotate again"):
    make_tfrecords.make_tfrecords(str(photos), out, align=SIZE, recrops=1, workers=2,
                                  split="0.5,0.5,0")


def test_recrops_need_align_and_annotation(tmp_path):
  os.makedirs(tmp_path / "photos")
  shutil.copy(os.path.join(SAMPLE_DIR, "astronaut.jpg"), tmp_path / "photos" / "astronaut.jpg")
  with pytest.raises(ValueError, match="--recrops=2 .* needs --align"):
    make_tfrecords.make_tfrecords(str(tmp_path / "photos"), str(tmp_path / "out"), recrops=2)
  with pytest.raises(ValueError, match="--recrops"):
    make_tfrecords.make_tfrecords(str(tmp_path / "photos"), str(tmp_path / "out"), align=SIZE,
                                  recrops=17)
