"""What every facekp command shares: quiet start-up, one-line user errors, configs from anywhere.

Import it first in an entry point, before anything that imports TensorFlow or MediaPipe:

  from facekp import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
  ...
  if __name__ == "__main__":
    cli.run(main)

By default a command shows facekp's own lines; `--verbosity=1` (or FACEKP_DEBUG=1) shows
TensorFlow's and MediaPipe's start-up and INFO lines too, and the traceback of every error.
A user error (a bad flag, config value, path or input) ends with one line saying what is wrong
and what to do, and exit status 1; anything else is a bug and keeps its traceback.
"""
import contextlib
import importlib.util
import os
import re
import sys
import tempfile

_VERBOSITY = re.compile(r"^--?(?:v|verbosity)=(-?\d+)$")


def _debug_requested(argv, environ):
  verbosity = [int(m.group(1)) for m in map(_VERBOSITY.match, argv) if m]
  return environ.get("FACEKP_DEBUG", "0") not in ("", "0") or bool(verbosity and verbosity[-1] > 0)


DEBUG = _debug_requested(sys.argv[1:], os.environ)
# Known start-up noise of TensorFlow's C++ on a machine without a GPU (duplicate plugin
# registrations, cuInit) and of absl's C++ logging; every other line printed during the import
# of TensorFlow is passed on.
_NOISE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory|computation placer already registered|"
    r"All log messages before absl::InitializeLog|failed call to cuInit|"
    r"oneDNN custom operations are on|This TensorFlow binary is optimized to use available CPU|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"Could not find cuda drivers|TF-TRT Warning")


def quiet_environment(environ=os.environ):
  """C++ logging of TensorFlow and MediaPipe (glog/absl) at errors only, unless set already."""
  environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  environ.setdefault("GLOG_minloglevel", "2")


@contextlib.contextmanager
def _filtered_stderr():
  """Runs the body with the process's stderr (file descriptor 2, where C++ writes) in a
  temporary file, then passes on the lines that are not known noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if not _NOISE.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()


if not DEBUG and "tensorflow" not in sys.modules:
  quiet_environment()
  with _filtered_stderr():
    import tensorflow
    tensorflow.config.list_physical_devices("GPU")  # CUDA's probe prints its lines now

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _OwnLinesOnly:
  """An absl log filter: INFO lines from facekp's own code, warnings and errors from any."""

  def filter(self, record):
    return record.levelno >= 30 or record.pathname.startswith(ROOT + os.sep)


if not DEBUG:
  logging.get_absl_handler().addFilter(_OwnLinesOnly())
  for _name in ("tensorflow", "tensorflow_datasets"):
    logging.logging.getLogger(_name).setLevel(logging.logging.WARNING)

FLAGS = flags.FLAGS
# What a user can get wrong, as opposed to a bug: these end with their message on one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError, app.UsageError, flags.Error)
_HINT = "(FACEKP_DEBUG=1 or --verbosity=1 shows the traceback)"


def define_workdir(help_text, required=True):
  """The --workdir flag, defined here once for every entry point that takes one."""
  flags.DEFINE_string("workdir", None, help_text, required=required)


def _user_error_types():
  from facekp import files  # pylint: disable=import-outside-toplevel
  extra = [files.FolderInUseError]
  models = sys.modules.get("facekp.models")
  if models is not None:
    extra.append(models.WeightsUnavailableError)
  checkpointing = sys.modules.get("facekp.checkpointing")
  if checkpointing is not None:  # a full disk, NaN weights: the message says what to do
    extra.extend([checkpointing.DiskFullError, FloatingPointError])
  return USER_ERRORS + tuple(extra)


def one_line(error):
  """The message of a user error as one line: 'error: what is wrong, what to do'."""
  text = " ".join(str(error).split()) or type(error).__name__
  return f"error: {text}"


def fail(message):
  """Ends the program with one line on stderr and exit status 1."""
  sys.stderr.write(message.rstrip() + "\n")
  sys.stderr.flush()
  sys.exit(1)


def config_module_path(argv):
  """The file of --config=PATH[:ARG] in argv, or None."""
  for arg in argv:
    match = re.match(r"^--?config=([^:]*)", arg)
    if match:
      return match.group(1)
  return None


def config_arguments(argv=None):
  """--config=... and the --config.FIELD overrides of the command line, as one string."""
  argv = sys.argv[1:] if argv is None else argv
  return " ".join(a for a in argv if re.match(r"^--?(no)?config[.=]", a))


def make_config_importable(argv):
  """A config file imports its package (`from configs import default`): put the folder above
  that package on sys.path, so --config=/any/path/configs/tiny.py works from any directory.
  Returns a one-line problem when the file cannot be a config, else None."""
  path = config_module_path(argv)
  if path is None:
    return None
  if not os.path.isfile(path):
    return (f"--config={path}: no such file (configs are Python files such as configs/tiny.py; "
            "give its path, absolute or from the current directory)")
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(os.path.join(folder, "__init__.py")):
    parent = os.path.dirname(folder)
    if parent not in sys.path:
      sys.path.insert(0, parent)
  return None


def _load_config_file(path):
  spec = importlib.util.spec_from_file_location("_facekp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _field_paths(config, prefix=""):
  for key, value in config.items():
    yield prefix + key
    if hasattr(value, "items"):
      yield from _field_paths(value, f"{prefix}{key}.")


def config_override_problems(argv):
  """What is wrong with the --config.FIELD=VALUE arguments: fields the config lacks (with the
  closest ones) and values of the wrong type. [] when the config file itself does not load."""
  import difflib  # pylint: disable=import-outside-toplevel
  path = config_module_path(argv)
  try:
    config = _load_config_file(path)
  except Exception:  # pylint: disable=broad-except  (reported by config_flags itself)
    return []
  fields = list(_field_paths(config))
  problems = []
  for arg in argv:
    match = re.match(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", arg)
    if not match:
      continue
    name, value = match.groups()
    if name not in fields:
      close = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
      problems.append(f"--config.{name}: no such config field"
                      + (f"; did you mean {', '.join(close)}?" if close else "")
                      + " (--print_config lists every field)")
    elif value is not None:
      problem = _override_type_problem(name, value, config)
      if problem:
        problems.append(problem)
  return problems


def _override_type_problem(name, value, config):
  node = config
  for key in name.split(".")[:-1]:
    node = node[key]
  wanted = node.get_ref(name.split(".")[-1]).get_type()
  if wanted in (int, float):
    try:
      wanted(value)
    except ValueError:
      return (f"--config.{name}={value}: not a number ({wanted.__name__}); e.g. "
              f"--config.{name}={node[name.split('.')[-1]]}")
  return None


def parse_flags(argv):
  """absl's parsing with each mistake as one line: unknown flags, missing ones, config files
  that do not exist, unknown config fields and values of the wrong type."""
  problem = make_config_importable(argv[1:])
  if problem:
    fail(f"error: {problem}")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(one_line(f"{e}; --help lists the flags"))
  except Exception as e:  # pylint: disable=broad-except  (config_flags: bad --config.X values)
    problems = config_override_problems(argv[1:])
    if problems and not DEBUG:
      fail("error: " + "; ".join(problems))
    if DEBUG:
      raise
    fail(f"error: could not load the config {config_module_path(argv[1:])}: {one_line(e)[7:]} "
         f"{_HINT}")


def run(main, flags_parser=parse_flags):
  """app.run(main) with every user error as one line on stderr and exit status 1."""
  def guarded(argv):
    try:
      return main(argv)
    except _user_error_types() as e:
      if DEBUG:
        raise
      logging.flush()
      fail(f"{one_line(e)} {_HINT}" if not isinstance(e, app.UsageError) else one_line(e))
    except KeyboardInterrupt:
      fail("interrupted: run the same command again to continue where it stopped")
  app.run(guarded, flags_parser=flags_parser)
