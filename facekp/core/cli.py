"""What every facekp command shares: quiet start-up, lines a person reads, one-line user errors,
configs by name or from anywhere.

Import it first in an entry point, before anything that imports TensorFlow or MediaPipe:

  from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
  ...
  def run():  # the console script (setup.cfg)
    cli.run(main)

  if __name__ == "__main__":
    run()

By default a command shows facekp's own lines, each as `facekp <command>: message` (warnings
`facekp <command>: warning: ...`; facekp.core.log_format); `--verbosity=1` (or FACEKP_DEBUG=1)
shows absl's full prefix (time, file, thread), TensorFlow's and MediaPipe's start-up and INFO
lines too, and the traceback of every error. A user error (a bad flag, config value, path or
input, a full disk) ends with one line, `facekp <command>: error: ...`, saying what is wrong and
what to do, and exit status 1; anything else is a bug and keeps its traceback. Ctrl-C (exit
status 130) and SIGTERM (143) stop a command with one line saying how to continue.
"""
import importlib.util
import json
import os
import re
import shlex
import signal
import sys

from facekp.core import log_format
from facekp.core import stderr_filter
from facekp.core import utf8_mode

utf8_mode.restart_in_utf8_mode()  # under LC_ALL=C too, file names are UTF-8

_VERBOSITY = re.compile(r"^--?(?:v|verbosity)=(-?\d+)$")


def debug_requested(argv, environ):
  verbosity = [int(m.group(1)) for m in map(_VERBOSITY.match, argv) if m]
  return environ.get("FACEKP_DEBUG", "0") not in ("", "0") or bool(verbosity and verbosity[-1] > 0)


DEBUG = debug_requested(sys.argv[1:], os.environ)


if not DEBUG and "tensorflow" not in sys.modules:
  stderr_filter.quiet_environment()
  with stderr_filter.filtered_stderr():
    import tensorflow
    tensorflow.config.list_physical_devices("GPU")  # CUDA's probe prints its lines now

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging

# The configs that ship with facekp, which --config=NAME names (facekp/configs/NAME.py).
CONFIGS_DIR = os.path.join(log_format.PACKAGE, "configs")


def quiet_logs():
  """Lines a person reads (`facekp <command>: ...`), INFO lines of facekp's own code only;
  TensorFlow's and TFDS's warnings and errors."""
  log_format.use()
  for name in ("tensorflow", "tensorflow_datasets"):
    logging.logging.getLogger(name).setLevel(logging.logging.WARNING)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
  except ImportError:
    pass


FLAGS = flags.FLAGS
# What a user can get wrong, as opposed to a bug: these end with their message on one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError, app.UsageError, flags.Error)
_HINT = "(FACEKP_DEBUG=1 or --verbosity=1 shows the traceback)"


def define_workdir(help_text, required=True):
  """The --workdir flag, defined here once for every entry point that takes one."""
  flags.DEFINE_string("workdir", None, help_text, required=required)


def _user_error_types():
  from facekp.core import files  # pylint: disable=import-outside-toplevel
  extra = [files.FolderInUseError, files.DiskFullError]
  models = sys.modules.get("facekp.models.keypoint_model")
  if models is not None:
    extra.append(models.WeightsUnavailableError)
  tf = sys.modules.get("tensorflow")
  if tf is not None:  # file errors raised inside tf.io.gfile name the file
    extra += [tf.errors.NotFoundError, tf.errors.PermissionDeniedError]
  if "facekp.train.checkpointing" in sys.modules:  # NaN weights: the message says what to do
    extra.append(FloatingPointError)
  return USER_ERRORS + tuple(extra)


def disk_full_message(error):
  """The one line for a full disk that no stage explained (files.explain_disk_full does)."""
  from facekp.core import files  # pylint: disable=import-outside-toplevel
  if not files.is_disk_full(error):
    return None
  where = getattr(error, "filename", None)
  where = f" of {os.path.dirname(os.path.abspath(where))}" if isinstance(where, str) else ""
  return (f"no space left on the disk{where} ({one_line(error)}): free some space and run the "
          "same command again (what was finished is kept)")


class Terminated(KeyboardInterrupt):
  """SIGTERM, met as Ctrl-C is: the command stops where it is and says how to continue."""


def _terminate(signum, frame):
  raise Terminated(f"signal {signum}")


def _config_file_problem(message, argv):
  """The one line of a config file that failed to load: config_flags' message holds the whole
  traceback; keep the file's own line and the exception."""
  if "Traceback (most recent call last)" not in message:
    return None
  path = config_module_path(argv) or "the config file"
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  frames = re.findall(r'File "([^"]+)", line (\d+)', message)
  own = [line for file, line in frames if os.path.abspath(file) == os.path.abspath(path)]
  exception = next((line for line in reversed(lines)
                    if re.match(r"^[\w.]+(Error|Exception)\b", line)), lines[-1])
  return (f"--config={path}" + (f", line {own[-1]}" if own else "") + f": {exception}")


def one_line(error):
  """The message of a user error on one line."""
  return " ".join(str(error).split()) or type(error).__name__


def fail(message, status=1):
  """Ends the program with `message` as one line on stderr, after the command's prefix:
  fail("error: ...") writes `facekp <command>: error: ...`."""
  sys.stderr.write(log_format.line(message.rstrip()) + "\n")
  sys.stderr.flush()
  sys.exit(status)


def config_module_path(argv):
  """The file of --config=PATH[:ARG] in argv, or None."""
  for arg in argv:
    match = re.match(r"^--?config=([^:]*)", arg)
    if match:
      return match.group(1)
  return None


def packaged_configs():
  """The names of the configs that ship with facekp (tiny, few_faces, ...), sorted."""
  return sorted(name[:-3] for name in os.listdir(CONFIGS_DIR)
                if name.endswith(".py") and name != "__init__.py")


def config_file(name_or_path):
  """The file that --config=NAME_OR_PATH means: the path as given when that file exists, else
  the packaged config of that name (tiny or tiny.py: facekp/configs/tiny.py); None if neither."""
  if os.path.isfile(name_or_path):
    return name_or_path
  match = re.fullmatch(r"(\w+?)(\.py)?", name_or_path)
  if match and os.path.isfile(os.path.join(CONFIGS_DIR, match.group(1) + ".py")):
    return os.path.join(CONFIGS_DIR, match.group(1) + ".py")
  return None


def resolve_config_name(argv):
  """argv with a --config=NAME[:ARG] of a packaged config given as its file, which is what
  ml_collections' config flag loads; a path, or a name that names nothing, stays as it is."""
  resolved = []
  for arg in argv:
    match = re.match(r"^(--?config=)([^:]*)(.*)$", arg)
    path = match and config_file(match.group(2))
    resolved.append(f"{match.group(1)}{path}{match.group(3)}" if path else arg)
  return resolved


def config_arguments(argv=None):
  """--config=... and the --config.FIELD overrides of the command line, as one string."""
  argv = sys.argv[1:] if argv is None else argv
  return " ".join(a for a in argv if re.match(r"^--?(no)?config[.=]", a))


def make_config_importable(argv):
  """A config file may import its own package (`from myconfigs import base`): put the folder
  above that package on sys.path, so --config=/any/path/myconfigs/mine.py works from any
  directory. Returns a one-line problem when the file cannot be a config, else None."""
  path = config_module_path(argv)
  if path is None:
    return None
  if not os.path.isfile(path):
    return (f"--config={path}: no such file or packaged config (the packaged ones: "
            f"{', '.join(packaged_configs())}; or the path of a config file, absolute or from the "
            "current directory)")
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(os.path.join(folder, "__init__.py")):
    parent = os.path.dirname(folder)
    if parent not in sys.path:
      sys.path.insert(0, parent)
  return None


def load_config_file(path):
  """get_config() of a config file (configs/*.py, or one of the same form anywhere)."""
  problem = make_config_importable([f"--config={path}"])
  if problem:
    raise FileNotFoundError(problem)
  spec = importlib.util.spec_from_file_location("_facekp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def find_config_file(name_or_path):
  """config_file(name_or_path), or FileNotFoundError naming facekp's configs."""
  path = config_file(os.fspath(name_or_path))
  if path is None:
    raise FileNotFoundError(f"config {os.fspath(name_or_path)!r}: no such file, nor one of "
                            f"facekp's configs ({', '.join(packaged_configs())})")
  return path


def config_differences(config, base):
  """{field: value} where a config differs from `base` (both dicts, as config.json holds them):
  nested fields dotted ("augment.flip"), a nested dict whose keys differ from base's as one."""
  found = {}
  for key, value in config.items():
    old = base.get(key) if isinstance(base, dict) else None
    if isinstance(value, dict) and isinstance(old, dict) and set(value) == set(old):
      found.update({f"{key}.{k}": v for k, v in config_differences(value, old).items()})
    elif value != old:
      found[key] = value
  return found


def config_as_dict(config):
  """A ConfigDict as config.json stores it (tuples as lists)."""
  return json.loads(config.to_json_best_effort())


def closest_config(config):
  """(file, differences) of facekp's config from which `config` (a config.json dict) differs in
  the fewest fields: the likeliest start of a run whose config file was not recorded."""
  candidates = []
  for name in packaged_configs():
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    candidates.append((path, config_differences(config, config_as_dict(load_config_file(path)))))
  return min(candidates, key=lambda candidate: len(candidate[1]))


def training_command(*, config_file, workdir, data_dir, overrides):
  """The facekp.main command line that trains `config_file` with `overrides` ({field: value})."""
  arguments = [f"--config={config_file}", f"--workdir={workdir}", f"--config.data_dir={data_dir}"]
  arguments += [f"--config.{field}={value if isinstance(value, str) else value!r}"
                for field, value in sorted(overrides.items()) if field != "data_dir"]
  return "python -m facekp.main " + " ".join(map(shlex.quote, arguments))


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
    config = load_config_file(path)
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
  argv = resolve_config_name(argv)
  problem = make_config_importable(argv[1:])
  if problem:
    fail(f"error: {problem}")
  try:
    return FLAGS(argv)
  except SystemExit:  # absl ends --help with status 1: asking for help is no error
    if any(re.match(r"^--?(help|helpshort|helpfull|helpxml|h|\?)$", a) for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    missing = re.findall(r"Flag --(\w+) must have a value other than None", str(e))
    what = (", ".join(f"--{m}" for m in missing) + (" is" if len(missing) == 1 else " are")
            + " required") if missing else _config_file_problem(str(e), argv[1:]) or one_line(e)
    fail(f"error: {what}; --help lists the flags")
  except Exception as e:  # pylint: disable=broad-except  (config_flags: bad --config.X values)
    if DEBUG:
      raise
    problems = config_override_problems(argv[1:]) or [
        f"could not load the config {config_module_path(argv[1:])}: {one_line(e)} {_HINT}"]
    fail("error: " + "; ".join(problems))


def command(main, define_flags):
  """A module's console-script entry point: defines the module's flags, then run(main)."""
  def entry():
    define_flags()
    run(main)
  return entry


def run(main, flags_parser=parse_flags, name=None):
  """app.run(main) with facekp's lines (`facekp <name>: ...`) and every user error as one line on
  stderr and exit status 1. `name`: the command's, by default from the module that was started
  (python -m facekp.eval.evaluate, or the console script's module: facekp.main -> train)."""
  def guarded(argv):
    try:
      if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
      return main(argv)
    except _user_error_types() as e:
      if DEBUG:
        raise
      logging.flush()
      fail(f"error: {one_line(e)}" + ("" if isinstance(e, app.UsageError) else f" {_HINT}"))
    except KeyboardInterrupt as e:  # Ctrl-C (130) or SIGTERM (143)
      fail("interrupted: run the same command again to continue where it stopped",
           143 if isinstance(e, Terminated) else 130)
    except Exception as e:  # pylint: disable=broad-except  (a full disk is no bug)
      message = None if DEBUG else disk_full_message(e)
      if message is None:
        raise
      logging.flush()
      fail(f"error: {message}")
  entry = sys.modules["__main__"]
  started = getattr(entry, "__spec__", None)  # python -m MODULE; None for a console script
  module = started.name if started else main.__module__
  if module == "__main__":  # python path/to/script.py
    module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  log_format.set_command(name or log_format.command_name(module))
  if not entry.__doc__:  # a console script (facekp-train): --help shows the module's usage
    entry.__doc__ = sys.modules[main.__module__].__doc__
  # --help lists the flags of the program's file (absl names it sys.argv[0]): a console script's
  # or a wrapper's (tools/make_tfrecords.py) flags are its module's, and --workdir is defined here.
  for module in (main.__module__, __name__):
    for flag in FLAGS.get_flags_for_module(module):
      FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if not DEBUG:
    quiet_logs()
    stderr_filter.filter_stderr_for_good()
  signal.signal(signal.SIGTERM, _terminate)  # stops as Ctrl-C does, with exit status 143
  app.run(guarded, flags_parser=flags_parser)
