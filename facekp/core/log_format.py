"""facekp's log lines as a person reads them: `facekp <command>: message`, and `warning: ` or
`error: ` after the prefix, instead of absl's glog prefix (`I1203 08:41:13.712 140678 file.py:91]`).

A command names itself once (facekp.core.cli.run) and turns the format on; its worker processes
take both over (facekp.core.workers). `--verbosity=1` or FACEKP_DEBUG=1 leaves absl's prefix, which
says when, in which file and thread. Imports only absl: the workers' fork server loads it, and it
must not load TensorFlow there.
"""
import logging
import os

from absl import flags
from absl import logging as absl_logging

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# facekp's own code: the package, and in a checkout tools/ beside it (benchmarks, thin commands).
OWN_CODE = (PACKAGE + os.sep, os.path.join(os.path.dirname(PACKAGE), "tools") + os.sep)
_LEVEL_WORDS = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}
_command = None  # the name of the running command, once set_command has named it
_formatted = False  # whether use() has put CommandFormatter on absl's handler


def command_name(module):
  """The name a command goes by, from its module: facekp.main -> train (console script
  facekp-train), facekp.eval.evaluate -> evaluate, tools.make_tfrecords -> make_tfrecords."""
  name = module.rsplit(".", 1)[-1]
  return "train" if module == "facekp.main" else name


def set_command(name):
  global _command
  _command = name


def command():
  """The running command's name (None outside a command: tests, notebooks)."""
  return _command


def line(message, level=logging.INFO, name=None):
  """`message` as the running command writes it: `facekp <command>: [warning: |error: ]message`
  (the bare message, with its level word, outside a command)."""
  name = name or _command
  text = _LEVEL_WORDS.get(level, "") + message
  return f"facekp {name}: {text}" if name else text


class CommandFormatter(logging.Formatter):
  """An absl handler's formatter: each record as `line` writes it, a traceback below its line.
  A record of another library (a TensorFlow warning) names its logger after the level word."""

  def __init__(self, name):
    super().__init__()
    self.name = name

  def format(self, record):
    message = super().format(record)
    if not record.pathname.startswith(OWN_CODE):
      message = f"{source(record)}: {message}"
    return line(message, record.levelno, self.name)


def source(record):
  """Who wrote a record that is not facekp's: its logger (tensorflow), or for absl's and the
  root logger, which any library may use, the installed package or module of its file."""
  if record.name not in ("absl", "root"):
    return record.name
  parts = record.pathname.split(os.sep)
  for folder in ("site-packages", "dist-packages"):
    if folder in parts[:-1]:
      return os.path.splitext(parts[parts.index(folder) + 1])[0]
  return record.module


class OwnLinesOnly(logging.Filter):
  """INFO lines of facekp's own code only; warnings and errors of any (TensorFlow's, TFDS')."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or record.pathname.startswith(OWN_CODE)


def use():
  """From now on this process's absl log lines (every Python logger's, through the root
  logger) read `facekp <command>: ...`, INFO lines of facekp's code only."""
  global _formatted
  handler = absl_logging.get_absl_handler()
  handler.setFormatter(CommandFormatter(_command or "?"))
  if not any(isinstance(f, OwnLinesOnly) for f in handler.filters):
    handler.addFilter(OwnLinesOnly())
  _formatted = True


def worker_settings():
  """What a worker process needs to write its lines as this process does (for set_up_worker)."""
  return _command, _formatted, absl_logging.get_verbosity()


def set_up_worker(settings):
  """In a worker process: the command's name, line format and verbosity of the process that
  started it. The worker parses no flags: absl is told they are parsed, so that it writes no
  "Logging before flag parsing" line of its own."""
  name, formatted, verbosity = settings
  set_command(name)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  absl_logging.use_absl_handler()  # what app.run does: absl's handler on the root logger
  absl_logging.set_verbosity(verbosity)
  if formatted:
    use()
