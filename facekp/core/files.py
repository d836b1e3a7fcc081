"""Output files that are whole or absent, and a lock that keeps two runs out of one folder.

Every file facekp writes goes through `atomic_write` (bytes or text) or `atomic_path` (for
writers that want a path: Keras, matplotlib): the content goes to a hidden temporary name in
the same folder, is flushed to disk, and is renamed over the target, so a kill at any moment
leaves either the old file, the new file, or no file, never a part of one. Paths with a scheme
(gs://, s3://) go through tf.io.gfile, whose rename is the object store's.
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import socket
import sys
import time

import tensorflow as tf

LOCK_FILE = ".facekp.lock"


def is_local(path):
  """Whether a path is on this machine's file system (not gs://, s3://...)."""
  return "://" not in str(path)


_TEMPORARY_PREFIX = ".tmp"
# Extensions kept in a temporary name are at most this long: ".weights.h5" (Keras) fits.
_MAX_EXTENSION = 16


def temporary_name(path):
  """A hidden name beside `path`: `.tmp<pid>.<hash of the name><extension>`. Its length does not
  grow with the name's (any name the file system holds has a temporary name it holds too); it
  keeps the extension, since Keras and h5py look at it (".keras", ".weights.h5")."""
  folder, name = posixpath.split(str(path))
  digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
  return posixpath.join(folder, f"{_TEMPORARY_PREFIX}{os.getpid()}.{digest}{_extension(name)}")


def _extension(name):
  """The longest run of a name's trailing extensions that is at most _MAX_EXTENSION bytes long
  ("best.weights.h5" -> ".weights.h5", "a.png" -> ".png"); "" when even the last is longer."""
  found = ""
  for part in reversed(name.split(".")[1:]):
    longer = f".{part}{found}"
    if len(longer.encode("utf-8", "surrogateescape")) > _MAX_EXTENSION:
      break
    found = longer
  return found


def file_sha256(path):
  """The sha256 (hex) of a file's content, read in blocks (local or tf.io.gfile paths)."""
  digest = hashlib.sha256()
  opened = open(path, "rb") if is_local(path) else tf.io.gfile.GFile(path, "rb")
  with opened as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def is_temporary(name):
  return posixpath.basename(name).startswith(_TEMPORARY_PREFIX)


def _fsync_file(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_folder(folder):
  try:
    _fsync_file(folder or ".")
  except OSError:  # some file systems cannot sync a folder; the rename is still atomic
    pass


def commit(tmp, path):
  """Moves a finished temporary file over `path` (flushed to disk first when local)."""
  if is_local(path):
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_folder(os.path.dirname(path))
  else:
    tf.io.gfile.rename(tmp, path, overwrite=True)


def remove_quietly(path):
  try:
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
      tf.io.gfile.remove(path)
  except (OSError, tf.errors.OpError):
    pass


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path to write; on success it replaces `path`, on failure it is removed."""
  tmp = temporary_name(path)
  try:
    yield tmp
    commit(tmp, path)
  except BaseException:
    remove_quietly(tmp)
    raise


def atomic_write(path, data):
  """Writes bytes or text to `path` so that the file is either whole or absent."""
  if isinstance(data, str):
    data = data.encode("utf-8")
  with atomic_path(path) as tmp:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data)


def write_json(path, obj):
  atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}


def json_type(value):
  """What a JSON value is, in words ("an object", "a list", ...), for error messages."""
  return _JSON_TYPES.get(type(value), type(value).__name__)


def damaged(path, problem, remedy="delete it (or write it again) and run again"):
  """The ValueError for a file facekp wrote that does not hold what it should."""
  return ValueError(f"{path}: {problem}; it was damaged, or not written by this version of "
                    f"facekp: {remedy}")


def read_json(path, what="file", expect=None, remedy=None):
  """A JSON file's content; a clear error naming the file when it is missing, not JSON, or (with
  `expect`, dict or list) not a JSON value of that kind. `remedy`: what to do then."""
  remedy = remedy or "delete it (or write it again) and run again"
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no such {what}")
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f"{path} is a folder, not a {what}")
  try:
    with tf.io.gfile.GFile(path) as f:
      content = json.loads(f.read())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise damaged(path, f"not valid JSON ({e})", remedy) from None
  if expect is not None and not isinstance(content, expect):
    raise damaged(path, f"the {what} must be {json_type(expect())}, not {json_type(content)}",
                  remedy)
  return content


def remove_temporaries(folder):
  """Deletes temporary files left in `folder` by killed runs (not recursive)."""
  if not tf.io.gfile.isdir(folder):
    return 0
  removed = 0
  for name in tf.io.gfile.listdir(folder):
    if is_temporary(name):
      remove_quietly(posixpath.join(folder, name.rstrip("/")))
      removed += 1
  return removed


class DiskFullError(OSError):
  """A write failed for lack of space on the disk; the message names the folder and what to do."""

  def __init__(self, message):
    super().__init__(message)
    self.errno = errno.ENOSPC


def is_disk_full(error):
  """Whether an OSError or a TensorFlow error says that the disk is full."""
  text = str(error)
  return (getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text
          or "errno = 28" in text)


@contextlib.contextmanager
def explain_disk_full(folder, what="folder"):
  """Turns a full disk met in the body into a DiskFullError naming `folder`: files are written
  whole or not at all, so the same command continues once there is space."""
  try:
    yield
  except (OSError, tf.errors.OpError) as e:
    if isinstance(e, DiskFullError) or not is_disk_full(e):
      raise
    raise DiskFullError(
        f"no space left on the disk of {folder} ({what}): free some space there, or choose "
        "another folder, and run the same command again (what was finished is kept)") from e


class FolderInUseError(RuntimeError):
  """Another facekp process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder, what="folder"):
  """Holds an exclusive lock on a local folder for the duration of a run.

  The lock is the operating system's (flock): it goes when the process ends, however it ends,
  so a killed run never leaves a stale lock. A second run on the same folder fails at once with
  a message naming the holder. Folders in object storage are not locked.
  """
  if not is_local(folder):
    yield
    return
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
      raise FolderInUseError(
          f"{folder} is in use by {holder}: wait for that run to finish (or stop it), or "
          f"choose another {what}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:200]})\n"
                   ).encode(), 0)
    yield
  finally:
    os.close(fd)  # closing releases the lock
