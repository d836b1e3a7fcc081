"""MediaPipe on still images, the one wrapper every stage uses: Face Mesh (468 landmarks of up
to N faces, found by its own short-range detector) and the full-range face detector."""
import mediapipe as mp
from mediapipe.framework.formats import landmark_pb2
import numpy as np

from facekp.data import mediapipe_internals

# A serialised NormalizedLandmark as Face Mesh writes it: field tag and length, then x, y and z,
# each a tag byte and a little-endian float32.
_LANDMARK_BYTES = 17
_TAG_COLUMNS = [0, 1, 2, 7, 12]
_TAGS = np.array([0x0A, 0x0F, 0x0D, 0x15, 0x1D], np.uint8)
_X_Y_BYTES = np.r_[3:7, 8:12]
_LANDMARKS_STREAM = "multi_face_landmarks"


def xy_from_bytes(data):
  """[N, 2] float64 (x, y) of a serialised NormalizedLandmarkList, read from its bytes when
  every landmark holds only x, y and z (a fraction of the cost of parsing it, which is the
  fallback: docs/engineering.md)."""
  rows = np.frombuffer(data, np.uint8)
  if rows.size % _LANDMARK_BYTES == 0:
    rows = rows.reshape(-1, _LANDMARK_BYTES)
    if (rows[:, _TAG_COLUMNS] == _TAGS).all():
      return np.ascontiguousarray(rows[:, _X_Y_BYTES]).view("<f4").astype(np.float64)
  message = landmark_pb2.NormalizedLandmarkList.FromString(data)
  return np.array([(p.x, p.y) for p in message.landmark], dtype=np.float64).reshape(-1, 2)


def normalised_xy(landmark_list):
  """[N, 2] float64 (x, y) of a NormalizedLandmarkList."""
  return xy_from_bytes(landmark_list.SerializeToString())


class FaceMesh:
  """MediaPipe Face Mesh on still images; landmarks in pixels of the given image."""

  def __init__(self, max_faces=1):
    self._mesh = mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False)
    self.direct_input = mediapipe_internals.direct_input(self._mesh, _LANDMARKS_STREAM)

  def detect(self, image_rgb, indices=None):
    """uint8 [H, W, 3] -> list (one per face, MediaPipe's order) of float64 [468, 2] (x, y),
    or of [len(indices), 2] for just those landmarks."""
    height, width = image_rgb.shape[:2]
    faces = []
    for data in self.landmark_bytes(np.ascontiguousarray(image_rgb)):
      points = xy_from_bytes(data) * [width, height]
      faces.append(points if indices is None else points[list(indices)])
    return faces

  def landmark_bytes(self, image_rgb):
    """The serialised NormalizedLandmarkList of each face found in uint8 [H, W, 3] RGB.

    What SolutionBase.process does, less what it does for every output of every call and
    this class does not need: a new NamedTuple class, and each message parsed (which
    normalised_xy would serialise again). The public process() where this MediaPipe's
    internals differ (tested equal; facekp.data.mediapipe_internals)."""
    solution = self._mesh
    if self.direct_input is None:
      found = solution.process(image_rgb).multi_face_landmarks or ()
      return [face.SerializeToString() for face in found]
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
      raise ValueError(f"Face Mesh needs an RGB image, not an array of shape {image_rgb.shape}")
    return mediapipe_internals.serialized_outputs(solution, self.direct_input, image_rgb,
                                                  _LANDMARKS_STREAM)

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
