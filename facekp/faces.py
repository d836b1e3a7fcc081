"""One face routine for annotation and prediction: find a photo's faces, order them, crop them.

make_tfrecords (with and without --align) and predict see a photo's faces the same way:
  order   largest first, by the side of the face's FFHQ-style square (facekp.align);
  names   face k of photo "dir/a.jpg" is "dir/a_f<k>.png" (k from 0, in that order);
  crops   `crop_face`: the FFHQ-style crop, placed by Face Mesh on a first crop of it;
  errors  FACE_ERRORS give the photo an "error" row and the run goes on; an unreadable file
          gets facekp.images' reason; anything else (I/O errors, bugs) stops the run.
"""
import posixpath
import typing

import cv2
import numpy as np

from facekp import align
from facekp.keypoint_csv import OK

# MediaPipe is asked for a few faces even when one is wanted, so that "largest" is a real choice.
FACE_SEARCH_LIMIT = 5
# A crop whose Face Mesh centre lies this far (a fraction of the crop side) from the centre of
# the photo's landmarks mapped into it has found another face than the one it was cut for.
OTHER_FACE_OFFSET = 0.35
# What MediaPipe, OpenCV or a degenerate face square raise on one odd photo.
FACE_ERRORS = (ValueError, RuntimeError, cv2.error)


class Face(typing.NamedTuple):
  """One face of a photo, cropped: status "ok", "no_face" or "face_mismatch" (crop_face)."""
  name: str
  crop: np.ndarray
  matrix: np.ndarray  # photo pixels -> crop pixels
  landmarks: typing.Optional[np.ndarray]  # the crop's [468, 2] Face Mesh landmarks
  status: str


def face_size(landmarks_px):
  """Side of the face's FFHQ-style square in the image's pixels: what "largest" means."""
  _, half_side, _ = align.face_square(landmarks_px)
  return 2.0 * float(np.hypot(*half_side))


def largest_first(faces, max_faces):
  return sorted(faces, key=face_size, reverse=True)[:max_faces]


def face_name(photo_name, k):
  return f"{posixpath.splitext(photo_name)[0]}_f{k}.png"


def search_limit(max_faces):
  """How many faces to ask Face Mesh for, to keep the `max_faces` largest."""
  return max(max_faces, FACE_SEARCH_LIMIT)


def largest_face(mesh, image_rgb):
  """The [468, 2] landmarks of the image's largest face, or None."""
  faces = largest_first(mesh.detect(image_rgb), 1)
  return faces[0] if faces else None


def aligned_faces(photo_mesh, crop_mesh, photo_name, photo_rgb, size, max_faces):
  """Up to `max_faces` faces of a photo, largest first, each cropped to size x size."""
  faces = largest_first(photo_mesh.detect(photo_rgb), max_faces)
  return [Face(face_name(photo_name, k), *crop_face(crop_mesh, photo_rgb, landmarks, size))
          for k, landmarks in enumerate(faces)]


def crop_face(mesh, photo_rgb, landmarks, size):
  """The FFHQ-style crop of one face, placed by Face Mesh on a first crop of it.

  Face Mesh on a small face in a big photo is coarse, so the face is cropped from `landmarks`,
  Face Mesh runs on that crop, and its landmarks mapped back to the photo place the final crop.

  Returns:
    (crop, matrix from photo to crop pixels, the final crop's [468, 2] landmarks or None,
    status: "ok", "no_face", or "face_mismatch" when a crop shows another face).
  """
  for _ in range(2):
    crop, matrix = align.align_face(photo_rgb, landmarks, size)
    faces = mesh.detect(crop)
    if not faces:
      return crop, matrix, None, "no_face"
    expected_centre = align.transform_points(matrix, landmarks).mean(axis=0)
    if np.linalg.norm(faces[0].mean(axis=0) - expected_centre) > OTHER_FACE_OFFSET * size:
      return crop, matrix, None, "face_mismatch"
    landmarks = align.transform_points(align.invert(matrix), faces[0])
  return crop, matrix, faces[0], OK
