"""The journal of a long job over image files (annotation, prediction): what was done with which
file content, so a run killed at any moment resumes where it stopped.

An append-only file: a settings line, then per chunk, for each source image a stamp line
(`#stamp,<source>,<size>,<mtime_ns>,<sha256>`, blank for a file that could not be read; a rerun
compares the sha256 of every source: `unchanged`), its keypoint rows (`<source>,<csv row up to
its status>`: the source is the rows' photo) and optionally one JSON line
(`#extra,<source>,<json>`), and a commit line. Rows after the last commit (a run killed while
writing) are cut off when the journal is read. A source that appears again (done again after it
changed) replaces its earlier entry.
"""
import csv
import hashlib
import io
import json
import os
import stat
import time
import typing

import tensorflow as tf

from facekp.core import files
from facekp.core import keypoint_csv

_JOURNAL_MAGIC = "#facekp-journal "
_COMMIT = "#commit\n"
STAMP = "#stamp"
_EXTRA = "#extra"
# A commit reaches the OS at once (a killed run keeps it); the disk gets it within this time
# (a power cut loses at most that much work): an fsync per chunk blocked the loop ~2-14 ms.
_FSYNC_SECONDS = 1.0


class Stamp(typing.NamedTuple):
  """What the journal knows of a labelled file's content."""
  size: int
  mtime_ns: int
  sha256: str


class Entry(typing.NamedTuple):
  """What the journal holds of one source: its Stamp (None: it could not be read), its rows
  and the JSON value appended with them (None when there is none)."""
  stamp: typing.Optional[Stamp]
  rows: list
  extra: typing.Any = None


def stamp_of(path, data):
  """The stamp of the bytes `data` just read from `path` (its hash is what later runs compare;
  size and mtime, 0 in object storage, are kept for the reader)."""
  mtime_ns = os.stat(path).st_mtime_ns if files.is_local(path) else 0
  return Stamp(len(data), mtime_ns, hashlib.sha256(data).hexdigest())


def unchanged(path, stamp):
  """Whether the file at `path` still holds the content `stamp` describes: its sha256 is
  compared on every call. Size and mtime are no proof (a photo replaced by another of the same
  size with its time put back, as a restore or `cp -p` does, keeps both); only a new size
  settles it without reading. A file that could not be read before (no stamp) is tried again."""
  if stamp is None:
    return False
  try:
    return _size(path) == stamp.size and files.file_sha256(path) == stamp.sha256
  except (OSError, tf.errors.OpError):
    return False


def _size(path):
  """The size of a file, or -1 for what is not a regular file (a named pipe would block the
  read that hashes it)."""
  if not files.is_local(path):
    return tf.io.gfile.stat(path).length
  status = os.stat(path)
  return status.st_size if stat.S_ISREG(status.st_mode) else -1


class SettingsChanged(ValueError):
  """The journal was written with other settings."""


def recorded_fingerprint(path):
  """The settings a journal was written with (its first line), or None when there is no journal:
  a check of settings before any work, without reading the whole journal."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8", newline="") as f:
    header = f.readline()
  try:
    return json.loads(header[len(_JOURNAL_MAGIC):])
  except ValueError:
    raise ValueError(f"{path} is damaged (its first line is not a facekp journal's); delete it "
                     "to start the job over") from None


class Journal:
  """The journal file of one output folder (see the module docstring)."""

  def __init__(self, path, fingerprint):
    self.path = path
    self.fingerprint = fingerprint
    self._file = None
    self._synced = 0.0

  def read(self):
    """{source image name: Entry} of every committed chunk; creates the journal if absent. A
    journal that cannot be parsed is a ValueError naming it."""
    try:
      return self._read()
    except SettingsChanged:
      raise
    except (ValueError, KeyError, IndexError, TypeError) as e:  # UnicodeDecodeError, csv rows
      raise ValueError(f"{self.path} is damaged ({type(e).__name__}: {e}); it was not written "
                       "by this version of facekp: delete it to start the job over") from None

  def _read(self):
    if not os.path.exists(self.path):
      self._write_header()
      return {}
    with open(self.path, encoding="utf-8", newline="") as f:
      text = f.read()
    header, _, body = text.partition("\n")
    if json.loads(header[len(_JOURNAL_MAGIC):]) != self.fingerprint:
      raise SettingsChanged(
          f"{self.path} holds annotations made with other settings ({header[len(_JOURNAL_MAGIC):]}"
          f" instead of {json.dumps(self.fingerprint)}): use another --out, or delete it to "
          "annotate again")
    last_commit = body.rfind("\n" + _COMMIT)  # a commit line always follows a row
    committed = body[:last_commit + 1 + len(_COMMIT)] if last_commit >= 0 else ""
    if len(committed) != len(body):  # an interrupted write: keep only what was committed
      os.truncate(self.path, len((header + "\n" + committed).encode("utf-8")))
    done = {}
    for source, *fields in csv.reader(io.StringIO(committed)):
      if source == STAMP:
        name, size, mtime_ns, sha256 = fields
        done[name] = Entry(Stamp(int(size), int(mtime_ns), sha256) if size else None, [])
      elif source == _EXTRA:
        name, value = fields
        done[name] = done[name]._replace(extra=json.loads(value))
      elif fields:  # not a commit line
        done.setdefault(source, Entry(None, [])).rows.append(_parse_fields(fields, source))
    return done

  def _write_header(self):
    files.atomic_write(self.path, _JOURNAL_MAGIC + json.dumps(self.fingerprint) + "\n")

  def append(self, results):
    """Appends one chunk's [(source, Stamp or None, rows[, extra])] and commits it (flushed;
    fsynced at most once every _FSYNC_SECONDS, and on close). `extra`: any JSON value."""
    if self._file is None:
      self._file = open(self.path, "a", encoding="utf-8", newline="")
    writer = csv.writer(self._file, lineterminator="\n")
    for source, stamp, rows, *extra in results:
      writer.writerow([STAMP, source, *(stamp or ("", "", ""))])
      writer.writerows([source] + keypoint_csv.format_csv_fields(row) for row in rows)
      if extra and extra[0] is not None:
        writer.writerow([_EXTRA, source, json.dumps(extra[0])])
    self._file.write(_COMMIT)
    self._file.flush()
    if time.monotonic() - self._synced > _FSYNC_SECONDS:
      os.fsync(self._file.fileno())
      self._synced = time.monotonic()

  def close(self):
    if self._file is not None:
      os.fsync(self._file.fileno())
      self._file.close()
      self._file = None


def _parse_fields(fields, source):
  """A row as the journal stores it (its photo is the source it is filed under)."""
  name, width, height, *points, status = fields
  points = tuple(float(v) for v in points)
  return keypoint_csv.KeypointRow(name, int(width), int(height), points, status, source)
