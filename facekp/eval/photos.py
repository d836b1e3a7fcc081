"""The photo protocol: a predictor's points on whole photos, scored against the teacher run on
each face's own region, in the photo's pixels.

Aligned-crop figures (evaluate, yardsticks) score a model on crops its training data was cut like;
users give it whole photos, where finding, cropping and mapping the points back add their own
errors. This protocol scores that whole routine.

Predictor: anything with `predict(image, max_faces=N)` that returns a photo's faces, largest
first, each with `.box` (x0, y0, x1, y1) and `.points` float [K, 2] in the photo's continuous
pixels (pixel i's centre at i + 0.5): the Predictor of facekp.load (detection, FFHQ-style crop,
model, points mapped back: the routine of facekp.serve.predict), or a peer wrapped to that shape.

Teacher: MediaPipe Face Mesh (facekp.data.face_mesh), not on the whole photo, where its
short-range detector misses small, distant or many faces, but on each face's own region. The
faces are the boxes of MediaPipe's full-range detector and of the faces Face Mesh finds on the
whole photo; around each box a square region (TEACHER_CONTEXT box sides, enlarged to at least
TEACHER_MIN_SIDE px, the view facekp.data.faces gives Face Mesh of a detector's face) goes to
Face Mesh, and the face found there whose centre lies nearest the box's centre, and inside the
box, is the teacher's face. A face found twice (centres within SAME_FACE of a face's size) counts
once; the largest MAX_FACES of a photo are kept, as make_tfrecords --align keeps them.

Matching: each predicted face is paired with the teacher face whose centre (the centre of its
FFHQ-style square, facekp.data.align.face_square, which is also the centre of facekp's box for
that face) lies nearest its box's centre: one to one, nearest pairs first, and only within
SAME_FACE of the teacher face's size (its square's side, about four inter-ocular distances). A
teacher face no predicted face pairs with is a miss; a predicted face paired with none is extra
(a false detection, or a face beyond the teacher's MAX_FACES).

Figures (photo_metrics), over the faces found: NME (a face's mean point error divided by the
inter-ocular distance of the teacher's points, facekp.eval.metrics), MAE px (mean absolute
coordinate error, the photo's pixels), failure rate (NME > FAILURE); and the share of the
teacher's faces found.
"""
import contextlib
import typing

from absl import logging
import cv2
import numpy as np

from facekp.core import images as images_lib
from facekp.data import align
from facekp.data import face_mesh as face_mesh_lib
from facekp.data import faces as faces_lib
from facekp.eval import metrics as metrics_lib

MAX_FACES = 10  # faces a photo, largest first: make_tfrecords' --max_faces default
TEACHER_CONTEXT = 2.0  # a face's region: this many sides of its box (facekp.data.faces)
TEACHER_MIN_SIDE = 192  # ... enlarged to at least this many pixels (Face Mesh's input scale)
REGION_FACES = 3  # faces Face Mesh may return in one region; the one at the box is kept
SAME_FACE = 0.5  # centres within this share of a face's size: the same face
CENTRE_LANDMARKS = [33, 263, 61, 291]  # eye and mouth corners: a face's centre for the teacher
FAILURE = 0.10


class PhotoFaces(typing.NamedTuple):
  """The teacher's faces of some photos and each predictor's points on them (photo pixels).

  photos:     [F] the photo (its path as given) of each teacher face
  teacher:    float64 [F, K, 2], the teacher's points at the schema's mesh indices
  predicted:  {predictor name: float64 [F, K, 2]}, NaN where no predicted face was matched
  extra:      {predictor name: predicted faces matched to no teacher face}
  skipped:    photos left out (unreadable, or MediaPipe or OpenCV failed on them)
  """
  photos: list
  teacher: np.ndarray
  predicted: dict
  extra: dict
  skipped: int


@contextlib.contextmanager
def teacher_graphs(max_faces=MAX_FACES):
  """The teacher's MediaPipe graphs as a facekp.data.faces.Finder: Face Mesh on the whole photo,
  Face Mesh on one face's region and the full-range detector; closed on leaving."""
  with face_mesh_lib.FaceMesh(faces_lib.search_limit(max_faces)) as photo_mesh, \
      face_mesh_lib.FaceMesh(REGION_FACES) as region_mesh, \
      face_mesh_lib.FaceDetector() as detector:
    yield faces_lib.Finder(photo_mesh, region_mesh, detector)


def face_centre(landmarks_px):
  """The centre of a face's eye and mouth corners ([468, 2] Face Mesh landmarks)."""
  return np.asarray(landmarks_px, np.float64)[CENTRE_LANDMARKS].mean(axis=0)


def region_landmarks(mesh, photo_rgb, box):
  """Face Mesh's [468, 2] landmarks (photo pixels) of the face in a box, from the box's own
  region of the photo; None when the region shows no face centred inside the box."""
  height, width = photo_rgb.shape[:2]
  x0, y0, x1, y1 = box
  centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
  half = TEACHER_CONTEXT * max(x1 - x0, y1 - y0) / 2
  left, top = int(max(0, np.floor(centre[0] - half))), int(max(0, np.floor(centre[1] - half)))
  right = int(min(width, np.ceil(centre[0] + half)))
  bottom = int(min(height, np.ceil(centre[1] + half)))
  if right - left < 8 or bottom - top < 8:
    return None
  region = photo_rgb[top:bottom, left:right]
  scale = max(1.0, TEACHER_MIN_SIDE / max(region.shape[:2]))
  stretch = np.ones(2)
  if scale > 1:
    size = (round(region.shape[1] * scale), round(region.shape[0] * scale))
    stretch = np.array(size, np.float64) / [region.shape[1], region.shape[0]]
    region = cv2.resize(region, size, interpolation=cv2.INTER_LINEAR)
  found = [points / stretch + [left, top] for points in mesh.detect(region)]
  inside = [points for points in found
            if x0 <= face_centre(points)[0] <= x1 and y0 <= face_centre(points)[1] <= y1]
  if not inside:
    return None
  return min(inside, key=lambda points: np.linalg.norm(face_centre(points) - centre))


def _is_new(centre, faces):
  return all(np.linalg.norm(centre - face_centre(other)) > SAME_FACE * faces_lib.face_size(other)
             for other in faces)


def teacher_faces(finder, photo_rgb, max_faces=MAX_FACES):
  """The teacher's faces of a photo: [468, 2] landmarks (photo pixels), largest first, up to
  max_faces (see the module's docstring); `finder` from teacher_graphs."""
  boxes = list(finder.detector.detect(photo_rgb))
  boxes += [(*points.min(axis=0), *points.max(axis=0))
            for points in finder.photo_mesh.detect(photo_rgb)]
  faces = []
  for box in boxes:
    box_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    if not _is_new(box_centre, faces):
      continue  # a face already found: no second Face Mesh run for it
    landmarks = region_landmarks(finder.crop_mesh, photo_rgb, box)
    if landmarks is not None and _is_new(face_centre(landmarks), faces):
      faces.append(landmarks)
  return faces_lib.largest_first(faces, max_faces)


def match_faces(teacher_centres, teacher_sizes, predicted_centres):
  """[T] the predicted face (its index) matched to each teacher face, -1 for a miss: one to one,
  nearest pairs first, a pair only when its distance is within SAME_FACE of the teacher face's
  size. Centres [T, 2] and [P, 2], sizes [T], all in the photo's pixels."""
  match = np.full(len(teacher_centres), -1, np.int64)
  if not len(teacher_centres) or not len(predicted_centres):
    return match
  distance = np.linalg.norm(np.asarray(teacher_centres, np.float64)[:, None]
                            - np.asarray(predicted_centres, np.float64)[None], axis=-1)
  limit = SAME_FACE * np.asarray(teacher_sizes, np.float64)[:, None]
  taken = set()
  for flat in np.argsort(distance, axis=None, kind="stable"):
    t, p = np.unravel_index(flat, distance.shape)
    if distance[t, p] <= limit[t, 0] and match[t] < 0 and p not in taken:
      match[t] = p
      taken.add(p)
  return match


def box_centres(faces):
  """[P, 2] the centres of predicted faces' boxes."""
  return np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in faces],
                  np.float64).reshape(-1, 2)


def photo_faces(photos, predictors, mesh_indices, max_faces=MAX_FACES):
  """Every predictor on every photo, beside the teacher's points of the same faces.

  photos: photo paths (any format facekp.core.images reads); predictors: {name: predictor}
  (see the module's docstring), each asked for up to max_faces faces a photo; mesh_indices: the
  Face Mesh landmark of each of the K slots (the model's schema). Returns PhotoFaces.
  """
  mesh_indices = list(mesh_indices)
  k = len(mesh_indices)
  names, teacher = [], []
  predicted, extra = {name: [] for name in predictors}, dict.fromkeys(predictors, 0)
  skipped = 0
  with teacher_graphs(max_faces) as finder:
    for i, path in enumerate(photos):
      try:
        image = images_lib.load_rgb(path)
        landmarks = teacher_faces(finder, image, max_faces)
        found = {name: predictor.predict(image, max_faces=max_faces)
                 for name, predictor in predictors.items()}
      except images_lib.ImageError as e:
        logging.warning("photo protocol: skipping %s", e)
        skipped += 1
        continue
      except faces_lib.FACE_ERRORS as e:  # one odd photo must not stop the protocol
        logging.warning("photo protocol: skipping %s: %s: %s", path, type(e).__name__, e)
        skipped += 1
        continue
      centres = np.array([align.face_square(points)[0] for points in landmarks]).reshape(-1, 2)
      sizes = np.array([faces_lib.face_size(points) for points in landmarks])
      for name, faces in found.items():
        match = match_faces(centres, sizes, box_centres(faces))
        predicted[name] += [np.asarray(faces[m].points, np.float64) if m >= 0
                            else np.full((k, 2), np.nan) for m in match]
        extra[name] += len(faces) - int(np.sum(match >= 0))
      teacher += [points[mesh_indices] for points in landmarks]
      names += [path] * len(landmarks)
      if (i + 1) % 100 == 0:
        logging.info("photo protocol: %d / %d photos", i + 1, len(photos))
  shape = (-1, k, 2)
  return PhotoFaces(names, np.array(teacher, np.float64).reshape(shape),
                    {name: np.array(p, np.float64).reshape(shape)
                     for name, p in predicted.items()}, extra, skipped)


def found_faces(result, name):
  """[F] bool: the teacher faces predictor `name` found (PhotoFaces)."""
  return ~np.isnan(result.predicted[name]).any(axis=(1, 2))


def photo_metrics(result, name, eye_slots, among=None):
  """The figures of one predictor (PhotoFaces): num_faces (the teacher's), faces_found (their
  share found), extra_faces; over the faces found (and in `among`, [F] bool, when given): nme,
  mae_px, failure_rate_0.10 (absent when it found none)."""
  found = found_faces(result, name)
  figures = {"num_faces": int(len(found)), "num_found": int(found.sum()),
             "faces_found": float(found.mean()) if len(found) else None,
             "extra_faces": int(result.extra[name])}
  chosen = found if among is None else found & among
  if chosen.any():
    pred, true = result.predicted[name][chosen], result.teacher[chosen]
    nme = metrics_lib.nme_per_image(pred, true, eye_slots)
    figures.update({"nme": float(nme.mean()), "mae_px": float(np.abs(pred - true).mean()),
                    f"failure_rate_{FAILURE:.2f}": metrics_lib.failure_rate(nme, FAILURE)})
  return figures
