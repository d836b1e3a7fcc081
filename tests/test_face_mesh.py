"""facekp.face_mesh: landmarks read from MediaPipe's messages exactly as attribute by attribute."""
import os

import mediapipe as mp
import numpy as np
from mediapipe.framework.formats import landmark_pb2

from facekp import face_mesh
from facekp import images
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
