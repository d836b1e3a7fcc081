"""The checks every command makes of its arguments before any work: numbers in their range, paths
of the right kind. Each refusal is one message naming the flag, the value given and what the
flag accepts; the same checks guard the Python functions behind the commands.
"""
import math
import numbers
import os

import tensorflow as tf

from facekp.core import files


def integer(flag, value, lower, upper=None):
  """`value` when it is an int in [lower, upper] (no upper bound when None), else ValueError."""
  if (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= lower
      and (upper is None or value <= upper)):
    return value
  accepted = (f"an integer from {lower} to {upper}" if upper is not None
              else f"an integer of {lower} or more")
  raise ValueError(f"--{flag}={value}: must be {accepted}")


def finite(flag, value):
  """`value` when it is a finite number, else ValueError."""
  if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
    return value
  raise ValueError(f"--{flag}={value}: must be a finite number")


def choice(flag, value, choices):
  """`value` when it is one of `choices`, else ValueError listing them."""
  if value in choices:
    return value
  raise ValueError(f"--{flag}={value}: choose one of {', '.join(map(str, choices))}")


def _nonempty(flag, path, what):
  if path is None or not str(path).strip():
    raise ValueError(f"--{flag} is empty: give {what}")
  return str(path)


def output_folder(flag, path):
  """A folder a command writes into: absent (it is created) or a folder, never a file or a path
  that leads through one."""
  path = _nonempty(flag, path, "the folder to write into")
  if not files.is_local(path):
    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
      raise NotADirectoryError(f"--{flag}={path} is a file, not a folder: give a folder")
    return path
  probe = os.path.abspath(path)
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    where = ("is a file" if probe == os.path.abspath(path) else
             f"leads through the file {probe}")
    raise NotADirectoryError(f"--{flag}={path} {where}, not a folder: give a folder (created "
                             "when missing)")
  return path


def input_path(flag, path, what="file or folder"):
  """An existing file or folder to read."""
  path = _nonempty(flag, path, f"a {what}")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"--{flag}={path}: no such {what}")
  return path


def input_folder(flag, path, what="folder"):
  """An existing folder to read."""
  path = input_path(flag, path, what)
  if not tf.io.gfile.isdir(path):
    raise NotADirectoryError(f"--{flag}={path} is a file, not a {what}")
  return path


def input_file(flag, path, what="file"):
  """An existing file (not a folder) to read."""
  path = input_path(flag, path, what)
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f"--{flag}={path} is a folder, not a {what}")
  return path
