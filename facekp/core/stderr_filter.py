"""The process's stderr without the lines TensorFlow's, TFLite's and MediaPipe's C++ print on every
run; every other line passes (facekp.core.cli turns it on for each command)."""
import contextlib
import os
import re
import sys
import tempfile

# Lines TensorFlow's, TFLite's and MediaPipe's C++ print on every run, which say nothing about
# this run (duplicate plugin registrations and the CUDA probe on a machine without a GPU,
# MediaPipe's graph set-up, the TFLite converter's ignored options). Every other line passes.
_NOISE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory|computation placer already registered|"
    r"All log messages before absl::InitializeLog|failed call to cuInit|"
    r"This TensorFlow binary is optimized to use available CPU|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"Could not find cuda drivers|TF-TRT Warning|oneDNN custom operations are on|"
    r"Created TensorFlow Lite XNNPACK delegate|inference_feedback_manager\.cc|"
    r"landmark_projection_calculator\.cc|gl_context\.cc|Ignored output_format|"
    r"Ignored drop_control_dependency|MLIR V1 optimization pass is not enabled|"
    r"Local rendezvous is aborting with status: OUT_OF_RANGE|"
    r"^\s*\d+%\|.*\| \d+/\d+ \[")  # TFDS's progress bars
_FILTERING = False
_UNFILTERED_STDERR = None  # the real stderr once filter_stderr_for_good has replaced fd 2


def passes(line):
  return not _NOISE.search(line)


def quiet_environment(environ=os.environ):
  """C++ logging of TensorFlow and MediaPipe (glog/absl) at errors only, unless set already."""
  environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  environ.setdefault("GLOG_minloglevel", "2")


@contextlib.contextmanager
def filtered_stderr():
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
        if passes(line):
          sys.stderr.write(line)
      sys.stderr.flush()


def unfiltered_stderr():
  """The real stderr (a file descriptor) for a process that must be heard even when this one
  hangs inside TensorFlow with the interpreter held (the filter thread cannot run then); None
  when stderr is not filtered."""
  return _UNFILTERED_STDERR


def filter_stderr_for_good():
  """From now on the process's stderr, and that of the processes it starts (MediaPipe workers),
  goes through a pipe whose reader drops the known noise lines. Lines end at a newline or a
  carriage return (progress lines); a partial line is passed on once the writer pauses. At exit
  the reader drains what is left, so no final message is lost."""
  global _FILTERING, _UNFILTERED_STDERR
  if _FILTERING:
    return
  _FILTERING = True
  import atexit  # pylint: disable=import-outside-toplevel
  import select  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  sys.stderr.flush()
  original, (read_end, write_end) = os.dup(2), os.pipe()
  _UNFILTERED_STDERR = original
  os.dup2(write_end, 2)
  os.close(write_end)
  closing = threading.Event()

  def write(segment):
    if passes(segment.decode("utf-8", "replace")):
      os.write(original, segment)

  def forward():
    pending = b""
    while True:
      if not select.select([read_end], [], [], 0.1)[0]:
        if pending:
          write(pending)
          pending = b""
        if closing.is_set():
          return
        continue
      chunk = os.read(read_end, 65536)
      if not chunk:
        break
      *complete, pending = re.split(rb"(?<=[\r\n])", pending + chunk)
      for segment in complete:
        write(segment)
    if pending:
      write(pending)

  reader = threading.Thread(target=forward, name="facekp-stderr", daemon=True)
  reader.start()

  def drain():
    sys.stderr.flush()
    os.dup2(original, 2)  # this process now writes past the pipe; its children may still hold it
    closing.set()
    reader.join(timeout=5)

  atexit.register(drain)
