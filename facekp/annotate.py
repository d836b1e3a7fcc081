"""MediaPipe Face Mesh annotation: the FaceMesh wrapper, worker processes, a resumable journal.

`annotate_folder` labels every image of a folder (or, with `align_size`, every face of every
photo, cropped FFHQ-style first) in worker processes holding one FaceMesh each, and writes
face_keypoints.csv. Finished work goes to a journal as it arrives, so a run killed at any
moment (SIGKILL included) continues where it stopped and ends with the same CSV an
uninterrupted run writes. `derive_mirror_indices` finds each landmark's mirror partner by
running the annotator on mirrored faces.
"""
import concurrent.futures
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import posixpath
import time

from absl import logging
import cv2
import mediapipe as mp
import numpy as np
import scipy.optimize
import tensorflow as tf

from facekp import align
from facekp import dataset
from facekp import images
from facekp import schema as schema_lib

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
JOURNAL = "face_keypoints.journal"
ALIGNED_DIR = "aligned"
_JOURNAL_MAGIC = "#facekp-journal "
_COMMIT = "#commit\n"
# A crop whose Face Mesh centre lies this far (a fraction of the crop side) from the centre of
# the photo's landmarks mapped into it has found another face than the one it was cut for.
_OTHER_FACE_OFFSET = 0.35
_PROGRESS_SECONDS = 10.0
# A commit reaches the OS at once (a killed run keeps it); the disk gets it within this time
# (a power cut loses at most that much work): an fsync per chunk blocked the loop ~2-14 ms.
_JOURNAL_FSYNC_SECONDS = 1.0
_MAX_SAMPLE_FACES = 10
_SAME_FACE_OFFSET = 0.5  # eye distances; two different faces lie several apart


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


# --- Mirror partners and the schema -------------------------------------------------------------


def sample_images():
  """The committed sample faces (facekp/sample), as RGB arrays."""
  return [images.load_rgb(os.path.join(SAMPLE_DIR, name))
          for name in sorted(os.listdir(SAMPLE_DIR)) if name.endswith(".jpg")]


def _mirror_distances(mesh, image):
  """Per face of `image`: [468, 468] distances from landmark i to mirror landmark j mapped
  back (x -> W - x), in units of the distance between the eye centres."""
  faces = mesh.detect(image)
  mirrored = mesh.detect(image[:, ::-1])
  backs = [np.column_stack([image.shape[1] - m[:, 0], m[:, 1]]) for m in mirrored]
  for points in faces:
    eye_distance = np.linalg.norm(
        points[align.LEFT_EYE].mean(axis=0) - points[align.RIGHT_EYE].mean(axis=0))
    # The same face in the mirror: the one whose mapped-back centre is nearest.
    offsets = [np.linalg.norm(back.mean(axis=0) - points.mean(axis=0)) for back in backs]
    if offsets and min(offsets) < _SAME_FACE_OFFSET * eye_distance:
      back = backs[int(np.argmin(offsets))]
      yield np.linalg.norm(points[:, None] - back[None], axis=-1) / eye_distance


def derive_mirror_indices(mesh_indices, images_rgb=None):
  """For each Face Mesh index, the index that takes its place when the face is mirrored.

  Runs Face Mesh on each face (default: the sample faces) and on its horizontal mirror, maps
  the mirror's landmarks back and matches them to the original's. The nearest landmark alone is
  ambiguous (MediaPipe's mirrored mouth corner 61 lands nearer 306 than 291 on most faces), so
  the match is the one-to-one assignment of all 468 landmarks with the least total distance.
  """
  distances = []
  with FaceMesh(max_faces=_MAX_SAMPLE_FACES) as mesh:
    for image in sample_images() if images_rgb is None else images_rgb:
      distances.extend(_mirror_distances(mesh, image))
  if not distances:
    raise ValueError("Face Mesh found no face in the images given to derive mirror partners")
  cost = np.mean(distances, axis=0)
  _, partner = scipy.optimize.linear_sum_assignment(cost + cost.T)
  mirror = {i: int(partner[i]) for i in mesh_indices}
  for i, j in mirror.items():
    if j not in mirror:
      raise ValueError(f"the mirror partner of Face Mesh index {i} is {j}, which the selected "
                       f"landmarks {tuple(mesh_indices)} do not include: add it, so that a "
                       "horizontal flip can swap them")
    if mirror[j] != i:
      raise ValueError(f"mirror partners are not symmetric among {tuple(mesh_indices)}: "
                       f"{i} -> {j} but {j} -> {mirror[j]}")
  return tuple(mirror[i] for i in mesh_indices)


def make_schema(mesh_indices=schema_lib.DEFAULT_MESH_INDICES, images_rgb=None):
  return schema_lib.Schema(mesh_indices, derive_mirror_indices(mesh_indices, images_rgb))


# --- What one worker process does ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the annotation values (the journal refuses to mix settings)."""
  images_dir: str
  out_dir: str
  mesh_indices: tuple
  align_size: int = 0  # 0: annotate the images as they are
  max_faces: int = 1  # faces per photo when aligning

  def fingerprint(self):
    return {"mesh_indices": list(self.mesh_indices), "align_size": self.align_size,
            "max_faces": self.max_faces if self.align_size else 1}


def crop_name(photo_name, face):
  return f"{posixpath.splitext(photo_name)[0]}_f{face}.png"


_meshes = {}  # this process's FaceMesh instances, by max_faces


def _mesh(max_faces):
  if max_faces not in _meshes:
    _meshes[max_faces] = FaceMesh(max_faces)
  return _meshes[max_faces]


class Labeller:
  """Turns one listed image into its CSV rows, with this process's FaceMesh instances."""

  def __init__(self, settings):
    self.settings = settings
    self.mesh = _mesh(1)
    self.photo_mesh = _mesh(settings.max_faces) if settings.align_size else None
    self.indices = list(settings.mesh_indices)

  def label(self, image_name, image_rgb):
    """The row of the most prominent face (MediaPipe's first)."""
    height, width = image_rgb.shape[:2]
    faces = self.mesh.detect(image_rgb, self.indices)
    if not faces:
      return dataset.missing_row(image_name, len(self.indices), "no_face", width, height)
    return dataset.KeypointRow(image_name, width, height, tuple(faces[0].ravel()), dataset.OK)

  def rows_for(self, name):
    """Rows for one listed image; a bad input gives a row with its reason, never an exception."""
    try:
      image_rgb = images.load_rgb(f"{self.settings.images_dir}/{name}")
      if self.settings.align_size:
        return self._align_and_label(name, image_rgb)
      return [self.label(name, image_rgb)]
    except images.ImageError as e:
      return [dataset.missing_row(name, len(self.indices), e.reason)]
    except (ValueError, RuntimeError, cv2.error) as e:
      # One odd image must not stop a run over millions (MediaPipe, OpenCV or a degenerate face
      # square failing on it); the row and the log say so. I/O errors do stop the run.
      logging.warning("%s: %s: %s", name, type(e).__name__, e)
      return [dataset.missing_row(name, len(self.indices), "error")]

  def _align_and_label(self, photo_name, photo_rgb):
    faces = self.photo_mesh.detect(photo_rgb)
    if not faces:
      height, width = photo_rgb.shape[:2]
      return [dataset.missing_row(photo_name, len(self.indices), "no_face", width, height)]
    rows = []
    for k, landmarks in enumerate(faces):
      name = crop_name(photo_name, k)
      crop, row = self._crop_and_label(name, photo_rgb, landmarks)
      path = f"{self.settings.out_dir}/{ALIGNED_DIR}/{name}"
      tf.io.gfile.makedirs(posixpath.dirname(path))
      images.write_atomic(path, images.encode_png(crop))
      rows.append(row)
    return rows

  def _crop_and_label(self, name, photo_rgb, landmarks):
    size = self.settings.align_size
    crop, _, crop_landmarks, status = crop_face(self.mesh, photo_rgb, landmarks, size)
    if status != dataset.OK:
      return crop, dataset.missing_row(name, len(self.indices), status, size, size)
    points = tuple(crop_landmarks[self.indices].ravel())
    return crop, dataset.KeypointRow(name, size, size, points, dataset.OK)


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
    if np.linalg.norm(faces[0].mean(axis=0) - expected_centre) > _OTHER_FACE_OFFSET * size:
      return crop, matrix, None, "face_mismatch"
    landmarks = align.transform_points(align.invert(matrix), faces[0])
  return crop, matrix, faces[0], dataset.OK


def _label_chunk(settings, names):
  labeller = Labeller(settings)
  return [(name, labeller.rows_for(name)) for name in names]


def _start_worker():
  _mesh(1)
  time.sleep(0.2)  # long enough that every worker gets one of these tasks, so all start
  return os.getpid()


class Pool:
  """Worker processes, each keeping its own FaceMesh instances across tasks.

  Workers come from a fork server that imports only this module: forking a process that
  already runs TensorFlow threads is unsafe, and spawning re-imports TensorFlow per worker.
  """

  def __init__(self, workers=None):
    self.workers = workers or len(os.sched_getaffinity(0))
    self.started = False  # workers start on first use, each in seconds (TF and MediaPipe)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    self._executor = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)

  def start(self):
    """Starts every worker and its FaceMesh now (else on demand), for timing the steady state.
    Returns the workers' process ids."""
    self.started = True
    futures = [self._executor.submit(_start_worker) for _ in range(self.workers)]
    return sorted({future.result() for future in futures})

  def label_chunks(self, settings, chunks):
    """Yields the result of each chunk as it finishes, keeping a few chunks per worker queued."""
    self.started = True
    chunks = iter(chunks)
    pending = set()
    while True:
      while len(pending) < 2 * self.workers:
        chunk = next(chunks, None)
        if chunk is None:
          break
        pending.add(self._executor.submit(_label_chunk, settings, chunk))
      if not pending:
        return
      finished, pending = concurrent.futures.wait(
          pending, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        yield future.result()

  def map(self, function, *iterables):
    """Like the builtin map, in the workers (function must be importable there)."""
    self.started = True
    return self._executor.map(function, *iterables)

  def close(self):
    self._executor.shutdown(cancel_futures=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


# --- The journal ------------------------------------------------------------------------------


class Journal:
  """Append-only record of finished images: a settings line, then per chunk the rows
  (`source,<csv row>`) and a commit line. Rows after the last commit (a run killed while
  writing) are cut off when the journal is read."""

  def __init__(self, path, fingerprint):
    self.path = path
    self.fingerprint = fingerprint
    self._file = None
    self._synced = 0.0

  def read(self):
    """{source image name: [rows]} of every committed chunk; creates the journal if absent."""
    if not os.path.exists(self.path):
      self._write_header()
      return {}
    with open(self.path, encoding="utf-8", newline="") as f:
      text = f.read()
    header, _, body = text.partition("\n")
    if json.loads(header[len(_JOURNAL_MAGIC):]) != self.fingerprint:
      raise ValueError(
          f"{self.path} holds annotations made with other settings ({header[len(_JOURNAL_MAGIC):]}"
          f" instead of {json.dumps(self.fingerprint)}): use another --out, or delete it to "
          "annotate again")
    last_commit = body.rfind("\n" + _COMMIT)  # a commit line always follows a row
    committed = body[:last_commit + 1 + len(_COMMIT)] if last_commit >= 0 else ""
    if len(committed) != len(body):  # an interrupted write: keep only what was committed
      os.truncate(self.path, len((header + "\n" + committed).encode("utf-8")))
    done = {}
    for source, *fields in csv.reader(io.StringIO(committed)):
      if fields:  # not a commit line
        done.setdefault(source, []).append(_parse_fields(fields))
    return done

  def _write_header(self):
    tmp = f"{self.path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(_JOURNAL_MAGIC + json.dumps(self.fingerprint) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def append(self, results):
    """Appends one chunk's [(source, rows)] and commits it (flushed; fsynced at most once
    every _JOURNAL_FSYNC_SECONDS, and on close)."""
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8", newline="")
    writer = csv.writer(self._file, lineterminator="\n")
    for source, rows in results:
      writer.writerows([source] + dataset.format_csv_fields(row) for row in rows)
    self._file.write(_COMMIT)
    self._file.flush()
    if time.monotonic() - self._synced > _JOURNAL_FSYNC_SECONDS:
      os.fsync(self._file.fileno())
      self._synced = time.monotonic()

  def close(self):
    if self._file is not None:
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None


def _parse_fields(fields):
  name, width, height, *points, status = fields
  return dataset.KeypointRow(name, int(width), int(height), tuple(float(v) for v in points), status)


# --- The whole stage --------------------------------------------------------------------------


def _unique_crop_stems(names):
  """With alignment, photos a.jpg and a.png would write the same crops: keep the first."""
  seen, kept = set(), []
  for name in names:
    stem = posixpath.splitext(name)[0]
    if stem in seen:
      logging.warning("skipping %s: photo %s.* before it writes the same crop names", name, stem)
    else:
      seen.add(stem)
      kept.append(name)
  return kept


def _progress(done, total, seconds, faces):
  rate = done / max(seconds, 1e-9)
  minutes, secs = divmod(round((total - done) / rate) if rate else 0, 60)
  logging.info("annotated %d/%d images (%.1f%%), %.1f images/s, %d faces found, ETA %d:%02d:%02d",
               done, total, 100 * done / max(total, 1), rate, faces, minutes // 60, minutes % 60,
               secs)


def annotate_folder(settings, schema, *, names=None, workers=None, chunk_size=16, pool=None):
  """Annotates the images of settings.images_dir into <out_dir>/face_keypoints.csv.

  Resumes from the journal in out_dir. Returns the CSV's rows (sorted by image name); with
  alignment, a photo's rows are its crops, or one row under the photo's name if none.
  """
  if "://" in settings.out_dir:
    raise ValueError(f"annotation needs a local output folder, not {settings.out_dir}: its "
                     "journal is appended to and fsynced (copy the finished folder over after)")
  if names is None:
    names = images.list_images(settings.images_dir)
  if not names:
    raise ValueError(f"no images under {settings.images_dir} (looked for files ending in "
                     f"{', '.join(images.IMAGE_EXTENSIONS)})")
  if settings.align_size:
    names = _unique_crop_stems(names)
  tf.io.gfile.makedirs(settings.out_dir)
  journal = Journal(f"{settings.out_dir}/{JOURNAL}", settings.fingerprint())
  done = journal.read()
  todo = [name for name in names if name not in done]
  logging.info("%d images: %d annotated before, %d to do", len(names), len(names) - len(todo),
               len(todo))
  if todo:
    own_pool = pool is None
    pool = pool or Pool(workers)
    start = last_report = time.time()
    finished = faces = 0
    try:
      chunks = (todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size))
      for results in pool.label_chunks(settings, chunks):
        journal.append(results)
        done.update(results)
        finished += len(results)
        faces += sum(row.status == dataset.OK for _, rows in results for row in rows)
        if time.time() - last_report > _PROGRESS_SECONDS or finished == len(todo):
          _progress(finished, len(todo), time.time() - start, faces)
          last_report = time.time()
    finally:
      journal.close()
      if own_pool:
        pool.close()
  rows = sorted((row for name in names for row in done[name]), key=lambda r: r.image_name)
  dataset.write_keypoints_csv(f"{settings.out_dir}/{dataset.KEYPOINTS_CSV}", rows, schema)
  return rows
