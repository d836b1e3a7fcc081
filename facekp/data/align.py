"""FFHQ-style face alignment from MediaPipe Face Mesh landmarks.

The FFHQ recipe (Karras et al., ffhq-dataset `recreate_aligned_images`) on Face Mesh points:
eye centres (mean of each eye's contour) and mouth corners (61, 291) define an oriented square
around the face, which is resampled to `size` x `size`. Matrices act on continuous pixel
coordinates (a pixel's centre is at i + 0.5) and map ORIGINAL image points to CROP points, so
crop keypoints go back to the photo with `transform_points(invert(matrix), points)`.
"""
import cv2
import numpy as np
from mediapipe.python.solutions import face_mesh_connections

# "Right"/"left" are the subject's: the right eye and mouth corner 61 lie on the image's left.
RIGHT_EYE = sorted({i for edge in face_mesh_connections.FACEMESH_RIGHT_EYE for i in edge})
LEFT_EYE = sorted({i for edge in face_mesh_connections.FACEMESH_LEFT_EYE for i in edge})
RIGHT_MOUTH_CORNER = 61
LEFT_MOUTH_CORNER = 291


def face_square(landmarks_px):
  """FFHQ's oriented square: centre c and half-side vectors x (rightwards), y (downwards)."""
  landmarks = np.asarray(landmarks_px, dtype=np.float64)[:, :2]
  eye_left = landmarks[RIGHT_EYE].mean(axis=0)  # the eye on the image's left
  eye_right = landmarks[LEFT_EYE].mean(axis=0)
  eye_avg = (eye_left + eye_right) / 2
  eye_to_eye = eye_right - eye_left
  mouth_avg = (landmarks[RIGHT_MOUTH_CORNER] + landmarks[LEFT_MOUTH_CORNER]) / 2
  eye_to_mouth = mouth_avg - eye_avg
  x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
  x /= np.hypot(*x)
  x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
  y = np.flipud(x) * [-1, 1]
  c = eye_avg + eye_to_mouth * 0.1
  return c, x, y


def square_matrix(c, x, y, size):
  """The affine map sending the square's corners c -+ x -+ y to the corners of [0, size]^2."""
  linear = (size / 2) * np.linalg.inv(np.stack([x, y], axis=1))
  offset = size / 2 - linear @ c
  return np.concatenate([linear, offset[:, None]], axis=1)


def transform_points(matrix, points):
  """Applies a [2, 3] affine matrix to points [N, 2] (continuous pixel coordinates)."""
  points = np.asarray(points, dtype=np.float64)
  return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix):
  linear = np.linalg.inv(matrix[:, :2])
  return np.concatenate([linear, -(linear @ matrix[:, 2])[:, None]], axis=1)


def _to_pixel_index_convention(matrix):
  """cv2 puts pixel centres at integers: shift in by +0.5 and out by -0.5."""
  linear = matrix[:, :2]
  return np.concatenate([linear, (matrix[:, 2] + linear @ [0.5, 0.5] - 0.5)[:, None]], axis=1)


def align_face(image_rgb, landmarks_px, size=128):
  """Crops one face FFHQ-style.

  Args:
    image_rgb: uint8 [H, W, 3].
    landmarks_px: [468, 2] (or [468, 3]) Face Mesh landmarks in pixels of `image_rgb`.
    size: side of the square crop.

  Returns:
    (crop uint8 [size, size, 3], matrix float64 [2, 3] mapping image points to crop points).
  """
  matrix = square_matrix(*face_square(landmarks_px), size)
  return warp_to_square(image_rgb, matrix, size), matrix


def warp_to_square(image_rgb, matrix, size):
  """The size x size crop of image_rgb under `matrix` (image points to crop points)."""
  source, to_source = image_rgb, np.eye(3)
  # Shrinking by more than 2x in one bilinear warp aliases; average pixels down first (as FFHQ).
  shrink = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  if shrink < 0.5:
    height, width = image_rgb.shape[:2]
    new_w, new_h = max(1, round(width * shrink)), max(1, round(height * shrink))
    source = cv2.resize(image_rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    to_source = np.diag([new_w / width, new_h / height, 1.0])
  warp = np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_source)
  return cv2.warpAffine(source, _to_pixel_index_convention(warp[:2]), (size, size),
                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
