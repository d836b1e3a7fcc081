"""MediaPipe Face Mesh annotation of a folder: resumable face_keypoints.csv.

`annotate_folder` labels every image of a folder (or, with `align_size`, every face of every photo,
cropped FFHQ-style first; facekp.data.faces) in worker processes (facekp.core.workers) holding one
FaceMesh each, and writes face_keypoints.csv. Finished work goes to a journal (facekp.core.journal)
as it arrives, so a run killed at any moment (SIGKILL included) continues where it stopped and ends
with the same CSV an uninterrupted run writes; a file whose content changed since it was labelled
(its sha256, compared on every run) is labelled again. Every listed image gets its rows, each naming
its photo; with alignment, photos whose crop names would meet (a.jpg, a.png) keep their extension in
their crops' names (facekp.data.faces.crop_stems), and a crop whose name the file system cannot hold
is a row with status "name_too_long". `annotate_sources` does the same for several folders pooled
into one dataset (facekp.data.sources): a journal per folder, one CSV of every row.
"""
import dataclasses
import errno
import functools
import itertools
import os
import posixpath
import time

from absl import logging

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import images
from facekp.core import journal as journal_lib
from facekp.core import workers as workers_lib
from facekp.data import dedup
from facekp.data import face_mesh
from facekp.data import faces
from facekp.core.keypoint_csv import KeypointRow, OK, missing_row, write_keypoints_csv

JOURNAL = "face_keypoints.journal"
JOURNALS_DIR = "journals"  # of a dataset pooled from several folders: one journal per source
ALIGNED_DIR = "aligned"
NO_FACE_TRANSPARENT = "no_face_transparent"
NAME_TOO_LONG = "name_too_long"
_PROGRESS_SECONDS = 10.0
# Each chunk costs the main process a round trip through the pool's queues: 64 images a chunk
# keep that small beside Face Mesh's time, and a killed run loses at most two chunks a worker.
MAX_CHUNK = 64
# 2: stamps of the labelled files; faces largest first, also those of the full-range detector
_JOURNAL_VERSION = 2
# The journal extra of a labelled source that holds its images' reads (image_read); entries
# written before it existed have none, and cleaning reads their images.
_READS = "images"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that decides the annotation values (the journal refuses to mix settings)."""
  images_dir: str
  out_dir: str
  mesh_indices: tuple
  align_size: int = 0  # 0: annotate the images as they are
  max_faces: int = 1  # faces per photo when aligning
  recrops: int = 0  # with alignment: jittered re-crops of each face, each labelled (faces.recrops)
  # With alignment: (photo name, crop stem) of the photos whose crops are not named by
  # faces.crop_stem (with_crop_stems). Names only, so the journal's fingerprint leaves it out.
  renamed: tuple = ()
  # In a dataset pooled from several folders (facekp.data.sources), this folder's source name:
  # the names of its rows (and of its crops under aligned/) start with "<source>/", and its
  # journal is journals/<source>.journal. "" for a dataset of one folder. A name only, so the
  # fingerprint leaves it out too.
  source: str = ""

  @functools.cached_property
  def _stems(self):
    return dict(self.renamed)

  def dataset_name(self, name):
    """The name in the dataset of `name`, an image of images_dir (or a crop's name in it)."""
    return f"{self.source}/{name}" if self.source else name

  def crop_stem(self, name):
    """What the faces of photo `name` are named by (facekp.data.faces.face_name)."""
    return self.dataset_name(self._stems.get(name) or faces.crop_stem(name))

  @property
  def journal_path(self):
    if self.source:
      return f"{self.out_dir}/{JOURNALS_DIR}/{self.source}.journal"
    return f"{self.out_dir}/{JOURNAL}"

  def fingerprint(self):
    fingerprint = {"mesh_indices": list(self.mesh_indices), "align_size": self.align_size,
                   "max_faces": self.max_faces if self.align_size else 1,
                   "journal": _JOURNAL_VERSION}
    if self.align_size and self.recrops:  # absent otherwise: earlier journals stay valid
      fingerprint["recrops"] = [self.recrops, faces.RECROP_ROTATION, faces.RECROP_SCALE,
                                faces.RECROP_SHIFT]
    return fingerprint


_meshes = {}  # this process's MediaPipe instances: FaceMesh by max_faces, the detector by None


def _mesh(max_faces):
  if max_faces not in _meshes:
    _meshes[max_faces] = face_mesh.FaceDetector() if max_faces is None else face_mesh.FaceMesh(
        max_faces)
  return _meshes[max_faces]


class Labeller:
  """Turns one listed image into its CSV rows, with this process's FaceMesh instances."""

  def __init__(self, settings):
    self.settings = settings
    max_faces = settings.max_faces if settings.align_size else 1
    # Photos (--align) also get the full-range detector; images stored as face crops (FFHQ) are
    # what Face Mesh's own detector is made for, and a second detector would double the cost.
    detector = _mesh(None) if settings.align_size else None
    self.finder = faces.Finder(_mesh(faces.search_limit(max_faces)), _mesh(1), detector)
    self.indices = list(settings.mesh_indices)

  def label(self, image_name, image_rgb):
    """The row of the image's largest face (facekp.data.faces' order), or a no_face row."""
    height, width = image_rgb.shape[:2]
    landmarks = faces.largest_face(self.finder, image_rgb)
    if landmarks is None:
      return missing_row(image_name, len(self.indices), "no_face", width, height)
    return KeypointRow(image_name, width, height, tuple(landmarks[self.indices].ravel().tolist()),
                       OK)

  def rows_for(self, name):
    """Rows for one listed image; a bad input gives a row with its reason, never an exception."""
    return self.label_file(name)[1]

  def label_file(self, name):
    """(journal.Stamp of the file, or None when it could not be read; its rows, each naming
    `name` as its photo)."""
    stamp, rows = self._label_file(name)
    return stamp, [row._replace(photo=name) for row in rows]

  def label_and_read(self, name):
    """label_file's (stamp, rows) and {image name: image_read} of the images of its "ok" rows
    (the file itself, or its crops): what cleaning would read and decode again, taken from
    the bytes and pixels this labelling already holds."""
    reads = {}
    stamp, rows = self._label_file(name, reads)
    return stamp, [row._replace(photo=name) for row in rows], reads

  def _label_file(self, name, reads=None):
    path = f"{self.settings.images_dir}/{name}"
    row_name = self.settings.dataset_name(name)
    stamp = None
    try:
      data = images.read_bytes(path)
      stamp = journal_lib.stamp_of(path, data)
      image_rgb = images.decode_rgb(data, path)
      rows = (self._align_and_label(name, image_rgb, reads) if self.settings.align_size else
              [self.label(row_name, image_rgb)])
    except images.ImageError as e:
      return stamp, [missing_row(row_name, len(self.indices), e.reason)]
    except faces.FACE_ERRORS as e:
      # One odd image must not stop a run over millions; the row and the log say so.
      logging.warning("%s: %s: %s", row_name, type(e).__name__, e)
      return stamp, [missing_row(row_name, len(self.indices), "error")]
    if rows[0].status == "no_face" and len(rows) == 1 and images.has_transparency(data):
      rows = [rows[0]._replace(status=NO_FACE_TRANSPARENT)]
    if reads is not None and not self.settings.align_size and rows[0].status == OK:
      reads[row_name] = image_read(data, image_rgb, stamp.sha256)
    return stamp, rows

  def _align_and_label(self, photo_name, photo_rgb, reads=None):
    size = self.settings.align_size
    found = faces.aligned_faces(self.finder, self.settings.crop_stem(photo_name), photo_rgb, size,
                                self.settings.max_faces)
    if not found:
      height, width = photo_rgb.shape[:2]
      return [missing_row(self.settings.dataset_name(photo_name), len(self.indices), "no_face",
                          width, height)]
    recrops = lambda face: faces.recrops(self.finder.crop_mesh, photo_rgb, face,
                                         self.settings.recrops, size)
    return [self._write_crop(crop, reads) for face in found for crop in [face, *recrops(face)]]

  def _write_crop(self, face, reads=None):
    """The row of one face, its crop written to aligned/; a name the file system cannot hold
    gives a NAME_TOO_LONG row. `reads`: a dict that gets the image_read of an "ok" crop."""
    size = self.settings.align_size
    path = f"{self.settings.out_dir}/{ALIGNED_DIR}/{face.name}"
    try:
      os.makedirs(posixpath.dirname(path), exist_ok=True)
      encoded = images.encode_png(face.crop)
      files.atomic_write(path, encoded)
    except OSError as e:
      if e.errno != errno.ENAMETOOLONG:
        raise
      logging.warning("%s: %s", face.name, e.strerror)
      return missing_row(face.name, len(self.indices), NAME_TOO_LONG, size, size)
    if face.status != OK:
      return missing_row(face.name, len(self.indices), face.status, size, size)
    if reads is not None:
      reads[face.name] = image_read(encoded, face.crop)
    return KeypointRow(face.name, size, size, tuple(face.landmarks[self.indices].ravel().tolist()),
                       OK)


def image_read(data, image_rgb, bytes_digest=None):
  """[width, height, *dedup.fingerprint] of an image's bytes and its pixels as decoded: what
  cleaning's read of the file gives (facekp.data.cleaning.read_image), in JSON's terms for the
  journal. `bytes_digest`: the sha256 of `data` when already taken (the journal's stamp)."""
  height, width = image_rgb.shape[:2]
  return [width, height, bytes_digest or dedup.bytes_digest(data), dedup.pixels_digest(image_rgb),
          dedup.perceptual_hash(image_rgb)]


def _label_chunk(settings, names):
  """[(name, stamp, rows, journal extra)] of each image: the extra holds its image reads
  ({"images": {image name: image_read}}), so that cleaning need not read them again."""
  labeller = Labeller(settings)
  labelled = []
  for name in names:
    stamp, rows, reads = labeller.label_and_read(name)
    labelled.append((name, stamp, rows, {_READS: reads} if reads else None))
  return labelled


def _start_worker():
  """Builds what Labellers use (Face Mesh for a photo's faces and for one, the detector)."""
  _mesh(faces.search_limit(1))
  _mesh(1)
  _mesh(None)
  return workers_lib.report_pid()


class Pool(workers_lib.Pool):
  """Annotation workers, each keeping its own FaceMesh instances across tasks."""

  def __init__(self, workers=None):
    super().__init__(workers, preload=[__name__], warm_up=_start_worker)

  def label_chunks(self, settings, chunks):
    """Yields _label_chunk's [(name, stamp, rows, journal extra)] of each chunk as it finishes."""
    return self.imap_unordered(_label_chunk, itertools.repeat(settings), chunks)


def prepare_workers():
  """Starts the fork server of annotation workers now, in the background (facekp.core.workers):
  its imports, seconds of one core, then overlap what this process does before annotating
  (the schema, listing and hashing the images). Does nothing when it runs already."""
  workers_lib.start_fork_server([__name__])


def with_crop_stems(settings, names):
  """The settings for annotating `names`: with alignment, the crop stems of the photos whose
  crops faces.crop_stems names otherwise than by faces.crop_stem."""
  if not settings.align_size:
    return settings
  renamed = tuple((name, stem) for name, stem in faces.crop_stems(names).items()
                  if stem != faces.crop_stem(name))
  for name, stem in renamed:
    logging.info("%s: another photo has its stem; its faces are named %s", name,
                 faces.face_name(stem, "<k>"))
  return dataclasses.replace(settings, renamed=renamed)


def _up_to_date(settings, name, entry):
  """Whether a journal entry holds what labelling `name` gives now: the file's content is the
  same (its hash) and, with alignment, its crops are named by the stem the listing gives it."""
  if not journal_lib.unchanged(f"{settings.images_dir}/{name}", entry.stamp):
    return False
  return not settings.align_size or all(
      row.image_name == settings.dataset_name(name)
      or faces.is_face_of(row.image_name, settings.crop_stem(name)) for row in entry.rows)


def _remove_crops(settings, stale, kept):
  """Deletes the crops of the stale journal entries ({photo: Entry}) that no kept entry names:
  the faces of a photo that changed or was renamed are cropped again, perhaps fewer or under
  other names, and aligned/ holds only crops that a row names."""
  named = {row.image_name for entry in kept for row in entry.rows}
  for photo, entry in stale.items():
    for row in entry.rows:
      if row.image_name != settings.dataset_name(photo) and row.image_name not in named:
        files.remove_quietly(f"{settings.out_dir}/{ALIGNED_DIR}/{row.image_name}")


def image_reads(settings, names, done, labelled):
  """{image name: (size, fingerprint, checked)}: what cleaning's read of each image of an "ok"
  row gives (facekp.data.cleaning.read_images), from the journal entries of `names` (done) that
  hold it. `checked`: whether this run read those very bytes: every source (each one labelled
  or hashed by this run), and the crops of the photos it labelled (`labelled`); a crop of an
  earlier run may have been changed since, and cleaning hashes it again. An extra of another
  shape is left out (cleaning reads that image)."""
  reads = {}
  for name in names:
    extra = done[name].extra
    images_read = extra.get(_READS) if isinstance(extra, dict) else None
    if not isinstance(images_read, dict):
      continue
    checked = not settings.align_size or name in labelled
    for image_name, read in images_read.items():
      if (isinstance(read, list) and len(read) == 5 and all(isinstance(v, int) for v in read[:2])
          and all(isinstance(v, str) for v in read[2:])):
        reads[image_name] = ((read[0], read[1]), tuple(read[2:]), checked)
  return reads


def _progress(done, total, seconds, found):
  rate = done / max(seconds, 1e-9)
  minutes, secs = divmod(round((total - done) / rate) if rate else 0, 60)
  logging.info("annotated %d/%d images (%.1f%%), %.1f images/s, %d faces found, ETA %d:%02d:%02d",
               done, total, 100 * done / max(total, 1), rate, found, minutes // 60, minutes % 60,
               secs)


def list_sources(images_dir, *, exclude=()):
  """The image names under images_dir to annotate; a clear error when there is none."""
  names = images.list_images(images_dir, exclude=exclude)
  if not names:
    raise ValueError(f"no images under {images_dir} (looked for files ending in "
                     f"{', '.join(images.IMAGE_EXTENSIONS)})")
  return names


def annotate_folder(settings, schema, *, names=None, workers=None, chunk_size=0, pool=None,
                    reads=None):
  """Annotates the images of settings.images_dir into <out_dir>/face_keypoints.csv.

  Resumes from the journal in out_dir; the journal commits once per chunk of `chunk_size`
  images (0: MAX_CHUNK, or fewer so that each worker gets four chunks). Returns the CSV's rows
  (sorted by image name); with alignment, a photo's rows are its crops, or one row under the
  photo's name if none. `reads`: a dict to fill with image_reads of the journal.
  """
  rows = label_folder(settings, names=names, workers=workers, chunk_size=chunk_size, pool=pool,
                      reads=reads)
  write_keypoints_csv(f"{settings.out_dir}/{dataset_info.KEYPOINTS_CSV}", rows, schema)
  return rows


def annotate_sources(all_settings, schema, *, workers=None, chunk_size=0, pool=None, reads=None):
  """annotate_folder for several folders pooled into one dataset (facekp.data.sources): each
  folder's Settings name its source, so each resumes from a journal of its own; the one
  face_keypoints.csv in their out_dir holds the rows of all, sorted by image name (returned)."""
  own_pool = pool is None
  pool = pool or Pool(workers)  # started on first use: not at all when every label is reused
  try:
    rows = sorted((row for settings in all_settings for row in label_folder(
        settings, chunk_size=chunk_size, pool=pool, reads=reads)), key=lambda r: r.image_name)
  finally:
    if own_pool:
      pool.close()
  write_keypoints_csv(f"{all_settings[0].out_dir}/{dataset_info.KEYPOINTS_CSV}", rows, schema)
  return rows


def label_folder(settings, *, names=None, workers=None, chunk_size=0, pool=None, reads=None):
  """annotate_folder's rows, without writing the CSV (`reads` as for annotate_folder)."""
  if not files.is_local(settings.out_dir):
    raise ValueError(f"annotation needs a local output folder, not {settings.out_dir}: its "
                     "journal is appended to and fsynced (copy the finished folder over after)")
  if names is None:
    names = list_sources(settings.images_dir, exclude=[settings.out_dir])
  settings = with_crop_stems(settings, names)
  os.makedirs(posixpath.dirname(settings.journal_path), exist_ok=True)
  journal = journal_lib.Journal(settings.journal_path, settings.fingerprint())
  done = journal.read()
  if any(name not in done for name in names):
    prepare_workers()  # workers will be needed: their start overlaps hashing the journaled images
  stale = {name for name in names if name in done and not _up_to_date(settings, name, done[name])}
  todo = [name for name in names if name not in done] + [n for n in names if n in stale]
  logging.info("%s%d images: %d annotated before, %d changed or renamed since (labelled again), "
               "%d to do", f"{settings.source}: " if settings.source else "", len(names),
               len(names) - len(todo), len(stale), len(todo))
  if settings.align_size:
    _remove_crops(settings, {n: done[n] for n in stale},
                  [done[n] for n in names if n in done and n not in stale])
  if todo:
    own_pool = pool is None
    pool = pool or Pool(workers)
    chunk_size = chunk_size or max(1, min(MAX_CHUNK, len(todo) // (4 * pool.workers)))
    start = last_report = time.time()
    finished = found = 0
    try:
      chunks = (todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size))
      for results in pool.label_chunks(settings, chunks):
        journal.append(results)
        done.update((name, journal_lib.Entry(stamp, rows, extra))
                    for name, stamp, rows, extra in results)
        finished += len(results)
        found += sum(row.status == OK for _, _, rows, _ in results for row in rows)
        if time.time() - last_report > _PROGRESS_SECONDS or finished == len(todo):
          _progress(finished, len(todo), time.time() - start, found)
          last_report = time.time()
    finally:
      journal.close()
      if own_pool:
        pool.close()
  # The journal files rows under the photo's name in its folder; the CSV names it in the dataset.
  photo = settings.dataset_name
  rows = sorted((row._replace(photo=photo(name)) for name in names for row in done[name].rows),
                key=lambda r: r.image_name)
  if reads is not None:
    reads.update(image_reads(settings, names, done, set(todo)))
  return rows
