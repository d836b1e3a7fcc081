"""One face routine for annotation and prediction: find a photo's faces, order them, crop them.

make_tfrecords (with and without --align) and predict see a photo's faces the same way:
  finding Face Mesh's own faces, then (for photos: predict, make_tfrecords --align) those only
          MediaPipe's full-range detector finds (small, distant or many faces), each placed by
          Face Mesh on a crop around its box;
  order   largest first, by the side of the face's FFHQ-style square (facekp.data.align);
  names   face k of photo "dir/a.jpg" is "dir/a_f<k>.png" (k from 0, in that order); photos
          whose names would meet ("a.jpg" and "a.png") keep their extension: "dir/a.jpg_f<k>.png"
          (`crop_stems`);
  crops   `crop_face`: the FFHQ-style crop, placed by Face Mesh on a first crop of it;
  re-crops (make_tfrecords --recrops) `recrops`: each face's square turned, scaled and moved at
          random (seeded by the face's name), cut from the photo again and labelled by Face Mesh
          on that crop, not by moving the face's labels: augmentation whose labels are the
          teacher's own, named "<face stem>_r<j>.png" (facekp.data.splits);
  errors  FACE_ERRORS give the photo an "error" row and the run goes on; an unreadable file
          gets facekp.core.images' reason; anything else (I/O errors, bugs) stops the run.
"""
import collections
import hashlib
import posixpath
import re
import typing

import cv2
import numpy as np

from facekp.core.keypoint_csv import OK
from facekp.data import align
from facekp.data import splits

# MediaPipe is asked for a few faces even when one is wanted, so that "largest" is a real choice.
FACE_SEARCH_LIMIT = 5
# A crop whose Face Mesh centre lies this far (a fraction of the crop side) from the centre of
# the photo's landmarks mapped into it has found another face than the one it was cut for.
OTHER_FACE_OFFSET = 0.35
# What MediaPipe, OpenCV or a degenerate face square raise on one odd photo.
FACE_ERRORS = (ValueError, RuntimeError, cv2.error)
# Around a detector's box, Face Mesh gets a square this many box sides wide, enlarged to at least
# _BOX_MIN_SIDE pixels (Face Mesh misses faces far below its own input scale).
_BOX_CONTEXT = 2.0
_BOX_MIN_SIDE = 192
# A detected face is new when its centre lies this far (in face sizes) from every face found.
_SAME_FACE = 0.5
_CENTRE_LANDMARKS = [33, 263, 61, 291]  # eye and mouth corners
# The re-crops' jitter, at most: the ranges of facekp/configs/few_faces.py's augmentation.
RECROP_ROTATION = 20.0  # degrees
RECROP_SCALE = 0.15  # the square's side times 1 +- this
RECROP_SHIFT = 0.06  # the centre moved by this fraction of the side along each of its axes


class Finder(typing.NamedTuple):
  """What finds a photo's faces: Face Mesh for several faces and for one, and the full-range
  detector (None: Face Mesh's own detector only)."""
  photo_mesh: typing.Any
  crop_mesh: typing.Any
  detector: typing.Any = None


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
  if len(faces) < 2:  # nothing to order (most images: one face)
    return faces[:max_faces]
  return sorted(faces, key=face_size, reverse=True)[:max_faces]


def crop_stem(photo_name):
  """What a photo's faces are named by when no other photo's stem meets it ("dir/a.jpg" ->
  "dir/a")."""
  return posixpath.splitext(photo_name)[0]


def crop_stems(names):
  """{photo name: the stem its faces are named by (face_name)}: crop_stem, or the whole name for
  photos whose stems would meet ("a.jpg" and "a.png", or "a.jpg" and "a.jpg.png"), so that
  every photo's faces have names of their own. Whole names never meet (a folder holds each
  name once), so moving the photos of shared stems to their whole names ends."""
  stems = {name: crop_stem(name) for name in names}
  while True:
    users = collections.Counter(stems.values())
    shared = [name for name, stem in stems.items() if users[stem] > 1 and stem != name]
    if not shared:
      return stems
    stems.update((name, name) for name in shared)


def face_name(stem, k):
  """The name of face k of the photo whose crop stem is `stem` (crop_stems)."""
  return f"{stem}_f{k}.png"


def is_face_of(image_name, stem):
  """Whether `image_name` names a face (or a re-crop of one) of the photo whose crop stem is
  `stem`."""
  return re.fullmatch(re.escape(stem) + r"_f\d+(_r\d+)?\.png", image_name) is not None


def search_limit(max_faces):
  """How many faces to ask Face Mesh for, to keep the `max_faces` largest."""
  return max(max_faces, FACE_SEARCH_LIMIT)


def _landmarks_in_box(mesh, photo_rgb, box):
  """Face Mesh's landmarks (photo pixels) of the face in a detector's box, or None."""
  height, width = photo_rgb.shape[:2]
  x0, y0, x1, y1 = box
  half = _BOX_CONTEXT * max(x1 - x0, y1 - y0) / 2
  left, top = int(max(0, (x0 + x1) / 2 - half)), int(max(0, (y0 + y1) / 2 - half))
  right, bottom = int(min(width, (x0 + x1) / 2 + half)), int(min(height, (y0 + y1) / 2 + half))
  if right - left < 8 or bottom - top < 8:
    return None
  crop = photo_rgb[top:bottom, left:right]
  scale = max(1.0, _BOX_MIN_SIDE / max(crop.shape[:2]))
  if scale > 1:
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
  found = mesh.detect(crop)
  return found[0] / scale + [left, top] if found else None


def _is_new(centre, faces):
  return all(np.linalg.norm(centre - other[_CENTRE_LANDMARKS].mean(axis=0)) >
             _SAME_FACE * face_size(other) for other in faces)


def find_faces(finder, photo_rgb):
  """[468, 2] landmarks (photo pixels) of every face found, in the order found."""
  faces = finder.photo_mesh.detect(photo_rgb)
  for box in finder.detector.detect(photo_rgb) if finder.detector else ():
    x0, y0, x1, y1 = box
    if not _is_new(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), faces):
      continue  # a face Face Mesh found already: no second Face Mesh run for it
    landmarks = _landmarks_in_box(finder.crop_mesh, photo_rgb, box)
    if landmarks is not None and _is_new(landmarks[_CENTRE_LANDMARKS].mean(axis=0), faces):
      faces.append(landmarks)
  return faces


def largest_face(finder, image_rgb):
  """The [468, 2] landmarks of the image's largest face, or None."""
  faces = largest_first(find_faces(finder, image_rgb), 1)
  return faces[0] if faces else None


def aligned_faces(finder, stem, photo_rgb, size, max_faces):
  """Up to `max_faces` faces of a photo, largest first, each cropped to size x size and named
  by the photo's crop stem (crop_stems)."""
  faces = largest_first(find_faces(finder, photo_rgb), max_faces)
  return [Face(face_name(stem, k), *crop_face(finder.crop_mesh, photo_rgb, landmarks, size))
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
    found, status = _teacher(mesh, crop, matrix, landmarks, size)
    if status != OK:
      return crop, matrix, None, status
    landmarks = align.transform_points(align.invert(matrix), found)
  return crop, matrix, found, OK


def _teacher(mesh, crop, matrix, photo_landmarks, size):
  """(the crop's [468, 2] Face Mesh landmarks or None, status): "no_face", "face_mismatch" when
  the face found is not the one the crop was cut for (photo_landmarks mapped by matrix), "ok"."""
  faces = mesh.detect(crop)
  if not faces:
    return None, "no_face"
  expected_centre = align.transform_points(matrix, photo_landmarks).mean(axis=0)
  if np.linalg.norm(faces[0].mean(axis=0) - expected_centre) > OTHER_FACE_OFFSET * size:
    return None, "face_mismatch"
  return faces[0], OK


def recrops(mesh, photo_rgb, face, count, size):
  """`count` re-crops of a face cut by crop_face (none unless its status is "ok"): its square
  turned by up to RECROP_ROTATION degrees, scaled by up to 1 +- RECROP_SCALE and moved by up to
  RECROP_SHIFT of its side, drawn from a generator seeded by the face's name (the same crops in
  every run), each cut from the photo and labelled by Face Mesh on the new crop."""
  if face.status != OK or not count:
    return []
  landmarks = align.transform_points(align.invert(face.matrix), face.landmarks)
  centre, half_x, half_y = align.face_square(landmarks)
  digest = hashlib.sha256(face.name.encode("utf-8", "surrogateescape")).digest()
  rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
  out = []
  for j in range(1, count + 1):
    angle = np.radians(rng.uniform(-RECROP_ROTATION, RECROP_ROTATION))
    scale = 1.0 + rng.uniform(-RECROP_SCALE, RECROP_SCALE)
    shift_x, shift_y = 2.0 * rng.uniform(-RECROP_SHIFT, RECROP_SHIFT, 2)  # half sides -> sides
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = align.square_matrix(centre + shift_x * half_x + shift_y * half_y, turn @ half_x,
                                 turn @ half_y, size)
    crop = align.warp_to_square(photo_rgb, matrix, size)
    out.append(Face(splits.recrop_name(face.name, j), crop, matrix,
                    *_teacher(mesh, crop, matrix, landmarks, size)))
  return out
