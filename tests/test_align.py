"""facekp.data.align: FFHQ-style crops of real faces, checked by running MediaPipe on the crop."""
import os

import cv2
import numpy as np
import pytest

from facekp.core import images
from facekp.data import align
from facekp.data import face_mesh as face_mesh_lib
from conftest import SAMPLE_DIR


@pytest.fixture(scope="module")
def mesh():
  with face_mesh_lib.FaceMesh() as face_mesh:
    yield face_mesh


@pytest.fixture(scope="module", params=["astronaut.jpg", "grace_hopper.jpg"])
def face(request, mesh):
  """(photo, its Face Mesh landmarks) of a frontal sample face."""
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, request.param))
  return photo, mesh.detect(photo)[0]


def test_crop_puts_the_eyes_level_and_in_place(face, mesh):
  crop, matrix = align.align_face(*face, size=128)
  assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
  landmarks = mesh.detect(crop)[0]
  left_eye = landmarks[align.RIGHT_EYE].mean(axis=0)  # on the image's left
  right_eye = landmarks[align.LEFT_EYE].mean(axis=0)
  mouth = (landmarks[align.RIGHT_MOUTH_CORNER] + landmarks[align.LEFT_MOUTH_CORNER]) / 2
  dx, dy = right_eye - left_eye
  assert abs(np.degrees(np.arctan2(dy, dx))) < 2
  # FFHQ geometry: square side = 4 eye distances (frontal face), centre 0.1 of the way from
  # the eyes to the mouth, so eyes a little above the middle, mouth below.
  assert 28 < dx < 34
  assert abs((left_eye[0] + right_eye[0]) / 2 - 64) < 2
  assert 56 < (left_eye[1] + right_eye[1]) / 2 < 64
  assert 85 < mouth[1] < 100
  # The photo's landmarks carried by the matrix land where MediaPipe finds them in the crop.
  carried = align.transform_points(matrix, face[1])
  assert np.linalg.norm(carried - landmarks, axis=1).mean() < 1.5


def test_matrix_maps_the_square_to_the_crop(face):
  c, x, y = align.face_square(face[1])
  matrix = align.square_matrix(c, x, y, 128)
  corners = align.transform_points(matrix, [c - x - y, c + x - y, c - x + y, c + x + y, c])
  np.testing.assert_allclose(corners, [[0, 0], [128, 0], [0, 128], [128, 128], [64, 64]],
                             atol=1e-9)
  _, returned = align.align_face(*face, size=128)
  np.testing.assert_allclose(returned, matrix)


def test_big_photos_are_shrunk_first_with_the_same_geometry(face):
  photo, landmarks = face
  crop, matrix = align.align_face(photo, landmarks)
  big = cv2.resize(photo, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
  big_crop, big_matrix = align.align_face(big, landmarks * 4)
  assert np.sqrt(np.linalg.det(big_matrix[:, :2])) < 0.5  # the shrinking path was taken
  np.testing.assert_allclose(align.transform_points(big_matrix, landmarks * 4),
                             align.transform_points(matrix, landmarks), atol=1e-9)
  assert np.abs(big_crop.astype(int) - crop).mean() < 2


def test_transform_points_and_invert_round_trip():
  rng = np.random.RandomState(0)
  matrix = np.hstack([rng.normal(size=(2, 2)) + 2 * np.eye(2), rng.normal(size=(2, 1)) * 50])
  points = rng.uniform(0, 500, size=(20, 2))
  back = align.transform_points(align.invert(matrix), align.transform_points(matrix, points))
  np.testing.assert_allclose(back, points, atol=1e-9)
  np.testing.assert_allclose(align.invert(align.invert(matrix)), matrix, atol=1e-12)
