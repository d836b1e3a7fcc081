"""facekp.data.face_mesh: landmarks read from MediaPipe's messages exactly as attribute by attribute,
and its direct path through the graph giving exactly what MediaPipe's public process() gives."""
import os

import mediapipe as mp
import numpy as np
from mediapipe.framework.formats import landmark_pb2
import pytest

from facekp.core import images
from facekp.data import face_mesh
from facekp.data import mediapipe_internals
from conftest import SAMPLE_DIR


def _attribute_xy(landmark_list):
  return np.array([(p.x, p.y) for p in landmark_list.landmark], dtype=np.float64)


def test_landmarks_from_bytes_equal_the_attributes_of_every_face():
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, "multi_face.jpg"))
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=5) as mesh:
    found = mesh.process(photo).multi_face_landmarks
  assert len(found) >= 2
  for face in found:
    xy = face_mesh.normalised_xy(face)
    assert xy.shape == (468, 2)
    np.testing.assert_array_equal(xy, _attribute_xy(face))


def test_other_landmark_messages_are_read_by_attribute():
  message = landmark_pb2.NormalizedLandmarkList()
  for k in range(3):
    message.landmark.add(x=0.25 * k, y=0.5, z=0.0, visibility=0.9)  # visibility: 5 more bytes
  message.landmark.add(x=0.75)  # no y, no z: fewer bytes
  np.testing.assert_array_equal(face_mesh.normalised_xy(message),
                                [[0, 0.5], [0.25, 0.5], [0.5, 0.5], [0.75, 0]])


def _public_api_faces(photo, max_faces):
  with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces) as mesh:
    found = mesh.process(photo).multi_face_landmarks or ()
  height, width = photo.shape[:2]
  return [_attribute_xy(face) * [width, height] for face in found]


@pytest.mark.parametrize("name", ["multi_face.jpg", "jquery_faces.jpg", "grace_hopper.jpg"])
def test_direct_path_finds_what_the_public_api_finds(name, monkeypatch):
  photo = images.load_rgb(os.path.join(SAMPLE_DIR, name))
  mesh = face_mesh.FaceMesh(5)
  assert mesh.direct_input is not None, (  # the pinned MediaPipe must keep its internals
      f"MediaPipe {mp.__version__} lacks the internals facekp.data.mediapipe_internals uses "
      f"(checked on {mediapipe_internals.CHECKED_VERSION}): update that module")
  expected = _public_api_faces(photo, 5)
  for _ in range(2):  # a second image on the same graph (its timestamps move on)
    found = mesh.detect(photo)
    assert len(found) == len(expected) >= 1
    for points, want in zip(found, expected):
      np.testing.assert_array_equal(points, want)
  np.testing.assert_array_equal(mesh.detect(photo, indices=[1, 33])[0], expected[0][[1, 33]])
  monkeypatch.setattr(mediapipe_internals, "direct_input", lambda *args: None)  # they differ
  fallback = face_mesh.FaceMesh(5)
  for points, want in zip(fallback.detect(photo), expected):
    np.testing.assert_array_equal(points, want)


def test_direct_path_finds_no_face_in_a_blank_image_and_refuses_other_channels():
  mesh = face_mesh.FaceMesh(1)
  assert mesh.detect(np.full((128, 128, 3), 127, np.uint8)) == []
  with pytest.raises(ValueError, match="RGB"):
    mesh.detect(np.zeros((128, 128, 4), np.uint8))
