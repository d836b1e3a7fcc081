"""facekp.data.annotate: real MediaPipe in worker processes, a journal that survives interruption."""
import os
import shutil

import mediapipe as mp
import numpy as np
import pytest

from facekp.core import files
from facekp.core import images
from facekp.core import journal as journal_lib
from facekp.core import keypoint_csv
from facekp.data import align
from facekp.data import annotate
from facekp.data import face_mesh as face_mesh_lib
from facekp.data import faces
from conftest import SAMPLE_DIR, encode


@pytest.fixture(scope="module")
def mesh():
  with face_mesh_lib.FaceMesh() as face_mesh:
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
  written = keypoint_csv.read_keypoints_csv(f"{tmp_path}/out/face_keypoints.csv", default_schema)
  assert written == rows


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
  new_ok = sum(row.status == "ok" for row in everything if row.image_name not in names[:5])
  # a stamp and a row each, what cleaning reads of each face (#extra), one commit
  assert added.count("\n") == 2 * (len(names) - 5) + new_ok + 1
  assert added.count("\n#extra,") == new_ok > 0
  assert set(first) <= set(everything)
  assert len(everything) == len(names)


def test_journal_drops_an_interrupted_tail_and_continues(tmp_path, default_schema):
  path = str(tmp_path / annotate.JOURNAL)
  journal = journal_lib.Journal(path, {"k": 1})
  assert journal.read() == {}
  row = keypoint_csv.KeypointRow("a.png", 4, 3, tuple(float(v) for v in range(10)), "ok",
                                 "a.png")
  stamp = journal_lib.Stamp(10, 123, "ab")
  journal.append([("a.png", stamp, [row])])
  journal.close()
  with open(path, "a") as f:  # killed in the middle of the next chunk: one whole row, one torn
    f.write("b.png," + ",".join(keypoint_csv.format_csv_fields(row._replace(image_name="b.png"))))
    f.write("\nd.png,d.png,4,3,1.0,2.0")
  assert journal_lib.Journal(path, {"k": 1}).read() == {"a.png": journal_lib.Entry(stamp, [row])}
  journal = journal_lib.Journal(path, {"k": 1})
  journal.read()
  journal.append([("c.png", None, [row._replace(image_name="c.png")])])
  relabelled = row._replace(points=(0.5,) * 10)
  journal.append([("a.png", stamp._replace(sha256="cd"), [relabelled])])  # changed, labelled again
  journal.close()
  done = journal_lib.Journal(path, {"k": 1}).read()
  assert sorted(done) == ["a.png", "c.png"]
  assert done["a.png"] == journal_lib.Entry(stamp._replace(sha256="cd"), [relabelled])
  assert done["c.png"].stamp is None
  with pytest.raises(ValueError, match="other settings"):
    journal_lib.Journal(path, {"k": 2}).read()
  assert not journal_lib.unchanged(path, None)  # not read before: tried again


def test_a_photo_changed_under_its_name_is_labelled_again(tmp_path, default_schema, pool):
  """Two same-size files swapped: size and mtime can agree, the content hash does not."""
  folder = tmp_path / "imgs"
  folder.mkdir()
  hopper = images.load_rgb(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"))[:256, :256]
  astronaut = images.load_rgb(os.path.join(SAMPLE_DIR, "astronaut.jpg"))
  first, second = images.encode_png(hopper), images.encode_png(astronaut)
  (folder / "a.png").write_bytes(first)
  (folder / "b.png").write_bytes(second)
  settings = settings_for(folder, tmp_path / "out", default_schema)
  before = {r.image_name: r for r in annotate.annotate_folder(settings, default_schema, pool=pool)}
  times = [os.stat(folder / n).st_mtime_ns for n in ("a.png", "b.png")]
  (folder / "a.png").write_bytes(second)  # swapped, the times put back as they were
  (folder / "b.png").write_bytes(first)
  for name, t in zip(("a.png", "b.png"), times):
    os.utime(folder / name, ns=(t, t))
  after = {r.image_name: r for r in annotate.annotate_folder(settings, default_schema, pool=pool)}
  assert after["a.png"].points == before["b.png"].points
  assert after["b.png"].points == before["a.png"].points
  os.utime(folder / "a.png")  # touched only: same content, kept without relabelling
  journal = (tmp_path / "out" / annotate.JOURNAL).read_text()
  annotate.annotate_folder(settings, default_schema, pool=pool)
  assert (tmp_path / "out" / annotate.JOURNAL).read_text() == journal


def test_align_crops_every_face_and_annotates_the_crops(tmp_path, default_schema, mesh, pool):
  photos = tmp_path / "photos"
  os.makedirs(photos / "group")
  shutil.copy(os.path.join(SAMPLE_DIR, "multi_face.jpg"), photos / "group" / "multi_face.jpg")
  shutil.copy(os.path.join(SAMPLE_DIR, "astronaut.jpg"), photos / "astronaut.jpg")
  files.atomic_write(str(photos / "blank.png"), images.encode_png(np.zeros((50, 60, 3), np.uint8)))
  out = tmp_path / "out"
  settings = settings_for(photos, out, default_schema, align_size=96, max_faces=10)
  rows = annotate.annotate_folder(settings, default_schema, pool=pool)
  names = [r.image_name for r in rows]
  assert names[:2] == ["astronaut_f0.png", "blank.png"]
  assert rows[1].status == "no_face" and (rows[1].width, rows[1].height) == (60, 50)
  group = [n for n in names if n.startswith("group/multi_face_f")]
  # Face Mesh alone finds 3 of its 5 faces; the full-range detector the other 2.
  assert len(group) == 5 and group[0] == "group/multi_face_f0.png"
  for row in rows[:1] + rows[2:]:
    crop = images.load_rgb(f"{out}/aligned/{row.image_name}")
    assert crop.shape == (96, 96, 3) and (row.width, row.height) == (96, 96)
    if row.status == "ok":  # the crop's annotation is Face Mesh on the stored crop
      np.testing.assert_array_equal(
          row.keypoints(), mesh.detect(crop)[0][list(default_schema.mesh_indices)])
  assert sum(r.status == "ok" for r in rows) >= 4


def test_without_align_the_largest_face_is_labelled_as_predict_would(tmp_path, default_schema,
                                                                     mesh):
  """One face rule for annotation and prediction (facekp.data.faces): the largest face."""
  shutil.copy(os.path.join(SAMPLE_DIR, "multi_face.jpg"), tmp_path / "multi_face.jpg")
  labeller = annotate.Labeller(settings_for(tmp_path, tmp_path / "out", default_schema))
  (row,) = labeller.rows_for("multi_face.jpg")
  photo = images.load_rgb(str(tmp_path / "multi_face.jpg"))
  with face_mesh_lib.FaceMesh(max_faces=faces.FACE_SEARCH_LIMIT) as several:
    found = several.detect(photo)
  assert len(found) >= 3
  largest = max(found, key=faces.face_size)
  np.testing.assert_allclose(row.keypoints(), largest[list(default_schema.mesh_indices)],
                             atol=1.0)


def test_a_face_hidden_by_transparency_gets_a_hint(tmp_path, default_schema, astronaut):
  rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
  rgba[:, :, 3] = 0  # all transparent: load_rgb shows it black
  (tmp_path / "ghost.png").write_bytes(encode(rgba, "PNG"))
  labeller = annotate.Labeller(settings_for(tmp_path, tmp_path / "out", default_schema))
  (row,) = labeller.rows_for("ghost.png")
  assert row.status == annotate.NO_FACE_TRANSPARENT


def test_face_size_is_the_side_of_the_aligned_square(mesh):
  """The crop of side S shrinks the face's square by S / face_size."""
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, "grace_hopper.jpg"))
  (landmarks,) = mesh.detect(photo)
  _, matrix = align.align_face(photo, landmarks, 100)
  scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  assert faces.face_size(landmarks) == pytest.approx(100 / scale)


def test_what_annotation_reads_of_each_image_is_what_cleaning_reads(image_folder, tmp_path,
                                                                   default_schema, pool):
  """The size and fingerprint a worker takes of each ok image (or crop), journaled, equal
  cleaning's read of the file; a rerun takes them from the journal, the sources' checked by
  their hash and an earlier run's crops left for cleaning to hash again."""
  from facekp.data import cleaning  # pylint: disable=g-import-not-at-top
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("multi_face.jpg", "grace_hopper.jpg"):
    shutil.copy(os.path.join(SAMPLE_DIR, name), photos / name)
  for settings, root in [
      (settings_for(image_folder, tmp_path / "out", default_schema), image_folder),
      (settings_for(photos, tmp_path / "crops", default_schema, align_size=64, max_faces=3),
       tmp_path / "crops" / annotate.ALIGNED_DIR)]:
    reads = {}
    rows = annotate.annotate_folder(settings, default_schema, pool=pool, reads=reads)
    ok = sorted(row.image_name for row in rows if row.status == "ok")
    assert sorted(reads) == ok and len(ok) >= 3
    for name, (size, fingerprint, checked) in reads.items():
      assert (size, fingerprint) == cleaning.read_image(f"{root}/{name}"), name
      assert checked
    again = {}
    annotate.annotate_folder(settings, default_schema, pool=pool, reads=again)
    assert {name: value[:2] for name, value in again.items()} == {
        name: value[:2] for name, value in reads.items()}
    assert {value[2] for value in again.values()} == {not settings.align_size}
