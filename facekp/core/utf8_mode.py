"""Commands run in Python's UTF-8 mode, whatever the locale.

facekp names files in UTF-8 (CSVs, TFRecords, journals, tf.io.gfile paths). Under an ASCII
locale (LC_ALL=C, PYTHONUTF8=0) Python decodes file names and flags as ASCII, so a photo named
visage-été.png could be neither listed nor opened. A command started so re-executes itself at
once, before TensorFlow is imported, in UTF-8 mode (`-X utf8`, and PYTHONUTF8=1 for the
processes it starts). Library users and tests are left as they are.
"""
import os
import sys


def _is_utf8(encoding):
  return encoding.lower().replace("-", "").replace("_", "") == "utf8"


def _is_command():
  """Whether this process is a facekp command: `python -m facekp...`/`tools...` or a console
  script named facekp-*."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None:
    return spec.name.startswith(("facekp.", "tools."))
  return os.path.basename(sys.argv[0] if sys.argv else "").startswith("facekp-")


def restart_in_utf8_mode():
  """Re-executes this command in UTF-8 mode when the file system encoding is not UTF-8."""
  if sys.flags.utf8_mode or _is_utf8(sys.getfilesystemencoding()) or not _is_command():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]],
            {**os.environ, "PYTHONUTF8": "1"})
