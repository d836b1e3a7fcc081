"""facekp.annotate: real MediaPipe in worker processes, a journal that survives interruption."""
import os
import shutil

import mediapipe as mp
import numpy as np
import pytest

from facekp import annotate
from facekp import dataset
from facekp import images
from conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def mesh():
  with annotate.FaceMesh() as face_mesh:
    yield face_mesh


@pytest.fixture(scope="module")
def pool():
  with annotate.Pool(2) as worker_pool:
    yield worker_pool


def settings_for(images_dir, out_dir, schema, **kwargs):
  return annotate.Settings(str(images_dir), str(out_dir), schema.mesh_indices, **kwargs)


def test_detect_equals_mediapipe_called_directly(mesh):
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"))
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as direct:
    landmarks = direct.process(photo).multi_face_landmarks[0].landmark
  expected = np.array([(p.x * photo.shape[1], p.y * photo.shape[0]) for p in landmarks])
  (found,) = mesh.detect(photo)
  assert found.shape == (468, 2)
  np.testing.assert_array_equal(found, expected)


def test_every_image_gets_one_row_with_mediapipe_values_or_a_reason(
    image_folder, image_files, tmp_path, default_schema, mesh, pool):
  settings = settings_for(image_folder, tmp_path / "out", default_schema)
  rows = annotate.annotate_folder(settings, default_schema, pool=pool, chunk_size=3)
  assert [r.image_name for r in rows] == sorted(image_files)
  indices = list(default_schema.mesh_indices)
  for row in rows:
    assert row.status == image_files[row.image_name][1], row.image_name
    if row.status in ("ok", "no_face"):
      photo = images.load_rgb(f"{image_folder}/{row.image_name}")
      assert (row.width, row.height) == (photo.shape[1], photo.shape[0])
    if row.status == "ok":
      np.testing.assert_array_equal(row.keypoints(), mesh.detect(photo)[0][indices])
    else:
      assert row.points == (-1.0,) * 10
  assert dataset.read_keypoints_csv(f"{tmp_path}/out/face_keypoints.csv", default_schema) == rows


def test_a_rerun_only_annotates_what_is_new(image_folder, tmp_path, default_schema, pool):
  settings = settings_for(image_folder, tmp_path / "out", default_schema)
  names = images.list_images(image_folder)
  first = annotate.annotate_folder(settings, default_schema, names=names[:5], pool=pool)
  assert len(first) == 5
  journal = tmp_path / "out" / annotate.JOURNAL
  before = journal.read_text()
  everything = annotate.annotate_folder(settings, default_schema, names=names, pool=pool,
                                        chunk_size=100)
  added = journal.read_text()[len(before):]
  assert journal.read_text().startswith(before)
  assert added.count("\n") == len(names) - 5 + 1  # the new rows and one commit line
  assert set(first) <= set(everything)
  assert len(everything) == len(names)


def test_journal_drops_an_interrupted_tail_and_continues(tmp_path, default_schema):
  path = str(tmp_path / annotate.JOURNAL)
  journal = annotate.Journal(path, {"k": 1})
  assert journal.read() == {}
  row = dataset.KeypointRow("a.png", 4, 3, tuple(float(v) for v in range(10)), "ok")
  journal.append([("a.png", [row])])
  journal.close()
  with open(path, "a") as f:  # killed in the middle of the next chunk: one whole row, one torn
    f.write("b.png," + ",".join(dataset.format_csv_fields(row._replace(image_name="b.png"))))
    f.write("\nd.png,d.png,4,3,1.0,2.0")
  assert annotate.Journal(path, {"k": 1}).read() == {"a.png": [row]}
  journal = annotate.Journal(path, {"k": 1})
  journal.read()
  journal.append([("c.png", [row._replace(image_name="c.png")])])
  journal.close()
  assert sorted(annotate.Journal(path, {"k": 1}).read()) == ["a.png", "c.png"]
  with pytest.raises(ValueError, match="other settings"):
    annotate.Journal(path, {"k": 2}).read()


def test_align_crops_every_face_and_annotates_the_crops(tmp_path, default_schema, mesh, pool):
  photos = tmp_path / "photos"
  os.makedirs(photos / "group")
  shutil.copy(os.path.join(SAMPLE_DIR, "multi_face.jpg"), photos / "group" / "multi_face.jpg")
  shutil.copy(os.path.join(SAMPLE_DIR, "astronaut.jpg"), photos / "astronaut.jpg")
  images.write_atomic(str(photos / "blank.png"), images.encode_png(np.zeros((50, 60, 3), np.uint8)))
  out = tmp_path / "out"
  settings = settings_for(photos, out, default_schema, align_size=96, max_faces=10)
  rows = annotate.annotate_folder(settings, default_schema, pool=pool)
  names = [r.image_name for r in rows]
  assert names[:2] == ["astronaut_f0.png", "blank.png"]
  assert rows[1].status == "no_face" and (rows[1].width, rows[1].height) == (60, 50)
  group = [n for n in names if n.startswith("group/multi_face_f")]
  assert len(group) >= 3 and group[0] == "group/multi_face_f0.png"
  for row in rows[:1] + rows[2:]:
    crop = images.load_rgb(f"{out}/aligned/{row.image_name}")
    assert crop.shape == (96, 96, 3) and (row.width, row.height) == (96, 96)
    if row.status == "ok":  # the crop's annotation is Face Mesh on the stored crop
      np.testing.assert_array_equal(
          row.keypoints(), mesh.detect(crop)[0][list(default_schema.mesh_indices)])
  assert sum(r.status == "ok" for r in rows) >= 4
