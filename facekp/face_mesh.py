"""MediaPipe on still images, the one wrapper every stage uses: Face Mesh (468 landmarks of up
to N faces, found by its own short-range detector) and the full-range face detector."""
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


class FaceDetector(FaceMesh):
  """MediaPipe's full-range face detector (model_selection=1: small and distant faces, which
  Face Mesh's own short-range detector misses); boxes in pixels of the given image."""

  def __init__(self, min_confidence=0.5):  # pylint: disable=super-init-not-called
    self._mesh = mp.solutions.face_detection.FaceDetection(
        model_selection=1, min_detection_confidence=min_confidence)

  def detect(self, image_rgb):  # pylint: disable=arguments-differ
    """uint8 [H, W, 3] -> list of boxes (x0, y0, x1, y1) in pixels."""
    height, width = image_rgb.shape[:2]
    boxes = []
    for detection in self._mesh.process(np.ascontiguousarray(image_rgb)).detections or ():
      box = detection.location_data.relative_bounding_box
      boxes.append((box.xmin * width, box.ymin * height, (box.xmin + box.width) * width,
                    (box.ymin + box.height) * height))
    return boxes
