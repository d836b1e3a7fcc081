"""MediaPipe Face Mesh on still images: the one wrapper every stage uses."""
import mediapipe as mp
import numpy as np


class FaceMesh:
  """MediaPipe Face Mesh on still images; landmarks in pixels of the given image."""

  def __init__(self, max_faces=1):
    self._mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False)

  def detect(self, image_rgb, indices=None):
    """uint8 [H, W, 3] -> list (one per face, MediaPipe's order) of float64 [468, 2] (x, y),
    or of [len(indices), 2] for just those landmarks (reading all 468 costs ~5% extra)."""
    height, width = image_rgb.shape[:2]
    result = self._mesh.process(np.ascontiguousarray(image_rgb))
    faces = []
    for face in result.multi_face_landmarks or ():
      points = face.landmark if indices is None else [face.landmark[i] for i in indices]
      faces.append(np.array([(p.x * width, p.y * height) for p in points], dtype=np.float64))
    return faces

  def close(self):
    self._mesh.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
