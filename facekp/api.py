"""facekp's Python API: each stage as a function of keyword arguments, and a Predictor for photos.

  import facekp

  with facekp.load("runs/mine") as model:           # workdir, export folder, .keras, SavedModel
    for face in model.predict("photo.jpg"):         #   or .tflite; faces largest first
      print(face.box, face.landmarks)               # in the photo's pixels

  facekp.make_dataset(images="photos/", out="data/mine", align=128)  # images=[A, B], align=[0, 128]
  facekp.train_model("few_faces", workdir="runs/mine", data_dir="data/mine")
  facekp.evaluate_model(workdir="runs/mine")
  facekp.export_model(workdir="runs/mine")

The command lines run the same code: tools.make_tfrecords (make_dataset), facekp.main
(run_training, which train_model calls), facekp.eval.evaluate, facekp.serve.export and
facekp.serve.predict (whose functions Predictor is built on, so both give the same points).
Nothing here imports TensorFlow, Keras or MediaPipe before a function needs it: `import facekp`
stays light. A user's mistake (a bad argument, path, config or image) raises ValueError (configs:
facekp.train.config_rules.ConfigError, a ValueError), FileNotFoundError or
facekp.core.images.ImageError, each with a one-line message.
"""
import contextlib
import dataclasses
import importlib
import os
import typing

import numpy as np

# What a photo may be given as: a path, a NumPy array or a PIL image.
ImageLike = typing.Union[str, os.PathLike, np.ndarray, typing.Any]
DEFAULT_TFLITE = ("float32", "dynamic_range", "float16")  # facekp.serve.export.TFLITE_VARIANTS


def _module(name):
  """A facekp module, imported when first needed (facekp.core.cli first: it quiets the C++
  start-up lines of TensorFlow and MediaPipe)."""
  importlib.import_module("facekp.core.cli")
  return importlib.import_module(name)


def _quiet_stderr():
  """While the body runs, the process's stderr without the lines TensorFlow's and MediaPipe's
  C++ print on every run (facekp.core.stderr_filter); everything with FACEKP_DEBUG=1."""
  if _module("facekp.core.cli").DEBUG:
    return contextlib.nullcontext()
  return _module("facekp.core.stderr_filter").filtered_stderr()


def _read_only(array):
  array = np.array(array, np.float64)
  array.setflags(write=False)
  return array


# --- Prediction ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Crop:
  """How a face was cropped for the model: `size` x `size` pixels, by `method`
  (facekp.core.keypoints.crop_method), with `photo_to_crop` the float64 [3, 3] affine matrix from
  the photo's continuous pixel coordinates to the crop's."""
  size: int
  method: str
  photo_to_crop: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Face:
  """One face of a photo and its keypoints, all in the photo's continuous pixel coordinates
  (pixel i's centre at i + 0.5; a photo of width W spans [0, W]).

  box:     (x0, y0, x1, y1), the bounds of the face's aligned square (its crop's outline)
  corners: float64 [4, 2], that square's corners (it turns with the face): the crop's top-left,
           top-right, bottom-right and bottom-left
  points:  float64 [K, 2] (x, y), slot k's point in row k
  names:   the K slot names in slot order (the model's schema: nose_tip, right_eye_outer, ...;
           point_1 ... point_K for a model without one)
  crop:    the crop the model saw (Crop)
  """
  box: typing.Tuple[float, float, float, float]
  corners: np.ndarray
  points: np.ndarray
  names: typing.Tuple[str, ...]
  crop: Crop

  @property
  def landmarks(self) -> typing.Dict[str, typing.Tuple[float, float]]:
    """{slot name: (x, y)}, in slot order."""
    return {name: (float(x), float(y)) for name, (x, y) in zip(self.names, self.points)}


def _photo(image):
  """(uint8 RGB [H, W, 3], its name for face names) of a path, a NumPy array or a PIL image."""
  images = _module("facekp.core.images")
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    return images.load_rgb(path), os.path.basename(path)
  if isinstance(image, np.ndarray):
    return images.array_to_rgb(image), "image"
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if isinstance(image, Image.Image):
    return images.pil_to_rgb(image), "image"
  raise TypeError(f"an image is a path, a uint8 NumPy array or a PIL image, not a "
                  f"{type(image).__name__}")


class Predictor:
  """A keypoint model and the MediaPipe graphs that find and crop faces for it.

  predict(image) finds the faces of a photo, crops each as facekp.serve.predict does (the same
  functions: the points are predict's), runs the model and maps its points back into the photo.
  An image is a path (any format facekp.core.images reads; EXIF orientation applied), a uint8
  NumPy array ([H, W, 3] RGB; [H, W] or [H, W, 1] grayscale, repeated into RGB; [H, W, 4] RGBA,
  composited over black as image files are) or a PIL image (its pixels as stored, any mode).
  A float array, another dtype or shape raises ValueError; an unreadable or missing file raises
  facekp.core.images.ImageError (its .reason: "missing", "not_an_image", "truncated", ...).

  The MediaPipe graphs open on the first photo and stay open until close(): use it as a context
  manager, `with facekp.load(path) as model: ...`.
  """

  def __init__(self, path: typing.Union[str, os.PathLike]):
    with _quiet_stderr():
      checked = _module("facekp.serve.predict").load_checked_model(os.fspath(path))
    self._model = checked.model
    self.path: str = checked.model.path  # the model file or folder read
    self.image_size: int = checked.model.image_size
    self.names: typing.Tuple[str, ...] = tuple(checked.names)  # slot names, in slot order
    self.schema = checked.schema  # facekp.core.schema.Schema, or None when unknown
    self._finders = {}
    self._graphs = contextlib.ExitStack()
    self._closed = False

  def predict(self, image: ImageLike, *, max_faces: int = 1) -> typing.List[Face]:
    """The faces of one photo, largest first, up to max_faces: [Face] ([] when none is found).
    A face whose aligned crop shows no face any more (predict's "no_face" / "face_mismatch"
    rows) is left out."""
    rgb, name = _photo(image)
    predict_lib = _module("facekp.serve.predict")
    with _quiet_stderr():
      results = predict_lib.predict_faces(self._model, self._finder(max_faces), rgb, name,
                                          max_faces)
    return [self._face(result) for result in results if result.points is not None]

  def predict_batch(self, images: typing.Iterable[ImageLike], *,
                    max_faces: int = 1) -> typing.List[typing.List[Face]]:
    """predict() of each image: one list of faces per image, in order."""
    return [self.predict(image, max_faces=max_faces) for image in images]

  def close(self) -> None:
    """Closes the MediaPipe graphs; predict() then raises ValueError."""
    self._closed = True
    self._graphs.close()
    self._finders.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def __repr__(self):
    return (f"Predictor({self.path!r}, image_size={self.image_size}, names={self.names}"
            f"{', closed' if self._closed else ''})")

  def _finder(self, max_faces):
    if isinstance(max_faces, bool) or not isinstance(max_faces, int) or max_faces < 1:
      raise ValueError(f"max_faces must be an integer of at least 1, got {max_faces!r}")
    if self._closed:
      raise ValueError("this Predictor is closed: load the model again")
    limit = _module("facekp.data.faces").search_limit(max_faces)
    if limit not in self._finders:
      predict_lib = _module("facekp.serve.predict")
      self._finders[limit] = self._graphs.enter_context(predict_lib.face_finder(max_faces))
    return self._finders[limit]

  def _face(self, result):
    keypoints = _module("facekp.core.keypoints")
    outline = result.outline
    crop = Crop(self.image_size, keypoints.crop_method(self.image_size),
                _read_only(np.vstack([result.face.matrix, [0.0, 0.0, 1.0]])))
    return Face(box=tuple(float(v) for v in (*outline.min(axis=0), *outline.max(axis=0))),
                corners=_read_only(outline), points=_read_only(result.points), names=self.names,
                crop=crop)


def load(path: typing.Union[str, os.PathLike]) -> Predictor:
  """A Predictor for a model: a training workdir (its model.keras), an export folder (its
  saved_model/), a .keras file, a SavedModel directory or a .tflite file.

  Before it returns, the record of what the model was trained on (the export's model_card.json
  first, else its export_report.json or schema.json, else the workdir's dataset) is checked as
  facekp.serve.predict checks it: a model trained on another coordinate convention, or a record
  of another input size, raises ValueError; training crops other than facekp's alignment warn.
  """
  return Predictor(path)


def sample_photo(name: str = "astronaut.jpg") -> str:
  """The path of a photo that ships with facekp (facekp/sample; SOURCES.md gives each one's
  source and licence): examples run without photos of one's own."""
  return _module("facekp.core.sample").sample_photo(name)


# --- The stages ---------------------------------------------------------------------------------


def make_dataset(*, images: typing.Union[str, os.PathLike, typing.Sequence[typing.Union[
                     str, os.PathLike]]], out: typing.Union[str, os.PathLike],
                 align: typing.Union[int, typing.Sequence[int], str] = 0,
                 landmarks: typing.Union[str, typing.Sequence[int], None] = None,
                 workers: int = 0, split: str = "0.8,0.1,0.1", num_shards: int = 0,
                 max_faces: int = 10, csv: typing.Optional[str] = None, csv_units: str = "pixels",
                 chunk_size: int = 0, runner: str = "local", beam_options: str = "",
                 image_format: str = "png", recrops: int = 0) -> typing.Dict[str, typing.Any]:
  """A folder of face photos -> an annotated dataset of TFRecord shards in `out`
  (facekp.data.make_tfrecords; the command line is python -m tools.make_tfrecords, whose flags
  these arguments are). align=S crops every face of raw photos FFHQ-style to S px; landmarks:
  Face Mesh indices in slot order (a sequence or "1,33,..."; default the five of the schema).
  images=[folder, ...] pools several folders into one dataset (facekp.data.sources: images named
  "<folder's name>/<name>", copies across folders in one split), with align one value for all
  or one per folder ([0, 128] or "0,128"); a str or path is one folder, commas and all.
  image_format="pixels" stores raw pixels instead of PNG (a faster first epoch, 1.9x the disk).
  recrops=K (with align) adds K jittered re-crops of each face, each labelled by Face Mesh, to
  the train split.

  Returns the summary: rows, kept, dropped, duplicate_groups, faces per split ("splits") and the
  seconds of each stage.
  """
  schema = _module("facekp.core.schema")
  if landmarks is None:
    landmarks = schema.DEFAULT_MESH_INDICES
  elif isinstance(landmarks, str):
    landmarks = schema.parse_mesh_indices(landmarks)
  if isinstance(align, str):
    align = _module("facekp.data.sources").parse_align(align)
  driver = _module("facekp.data.make_tfrecords")
  return driver.make_tfrecords(
      images, os.fspath(out), align=align, landmarks=tuple(landmarks),
      workers=workers, split=split, num_shards=num_shards, max_faces=max_faces, csv=csv,
      chunk_size=chunk_size, csv_units=csv_units, runner=runner, beam_options=beam_options,
      image_format=image_format, recrops=recrops)


def resolve_config(config, *, data_dir=None, overrides=None):
  """(ConfigDict, its file or None) of a config given as a ConfigDict (copied), a config file's
  path or the name of one of facekp's configs ("tiny", "few_faces": facekp/configs/<name>.py), with
  data_dir and overrides ({"field": value}, nested fields dotted: {"augment.flip": 0.5}) set."""
  ml_collections = importlib.import_module("ml_collections")
  cli = _module("facekp.core.cli")
  if isinstance(config, ml_collections.ConfigDict):
    config, config_file = config.copy_and_resolve_references(), None
  else:
    config_file = cli.find_config_file(config)
    config = cli.load_config_file(config_file)
  fields = dict(overrides or {})
  if data_dir is not None:
    fields["data_dir"] = os.fspath(data_dir)
  for field, value in fields.items():
    _set_field(config, field, value)
  return config, config_file


def _set_field(config, field, value):
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    node = node.get(parent) if hasattr(node, "get") else None
  if not hasattr(node, "get") or leaf not in node:
    raise ValueError(f"overrides: {field}: no such config field (python -m facekp.main "
                     "--config=default --print_config lists them)")
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f"overrides: {field}={value!r}: {e}") from None


def train_model(config, *, workdir: typing.Union[str, os.PathLike],
                data_dir: typing.Union[str, os.PathLike, None] = None, restart: bool = False,
                overrides: typing.Optional[typing.Mapping[str, typing.Any]] = None
                ) -> typing.Dict[str, typing.Any]:
  """Trains a model into `workdir`, as python -m facekp.main does (the same run_training).

  config: an ml_collections ConfigDict, a config file's path, or the name of one of facekp's
  configs ("tiny", "few_faces", ...). data_dir and overrides ({"num_epochs": 5}) set its fields,
  like --config.data_dir= and --config.FIELD= on the command line. A workdir holding a run
  resumes it; restart=True deletes that run first (needed to change its config).

  Returns the validation metrics of the best weights, "epochs" run and "best_epoch" (from 1),
  and under "test" the test-split evaluation when config.evaluate_at_end.
  """
  config, config_file = resolve_config(config, data_dir=data_dir, overrides=overrides)
  return run_training(config, workdir=os.fspath(workdir), restart=restart,
                      config_file=config_file)


def run_training(config, *, workdir: str, restart: bool = False,
                 config_file: typing.Optional[str] = None) -> typing.Dict[str, typing.Any]:
  """Every training run's steps, the command line's included: check the whole config before any
  file is read, check the workdir (with restart, delete its run: the chief only, under several
  workers), check the dataset, train, record the config file (for the model card), then with
  config.evaluate_at_end evaluate on the test split (the chief). Returns what train_model does.
  """
  logging = importlib.import_module("absl.logging")
  workdir_lib = _module("facekp.core.workdir")
  config_rules = _module("facekp.train.config_rules")
  hardware = _module("facekp.train.hardware")
  resume_rules = _module("facekp.train.resume_rules")
  config_rules.validate(config)
  if hardware.is_chief() or not restart:
    resume_rules.check_workdir(workdir, config, restart=restart)
  config_rules.check_dataset(config)
  logging.info("training %s into %s (--verbosity=1 prints every field)",
               describe_config(config, config_file), workdir)
  logging.vlog(1, "config:\n%s", config)
  metrics = _module("facekp.train.loop").train_and_evaluate(config, workdir)
  if hardware.is_chief():
    workdir_lib.write_config_source(workdir, config_file)
    if config.evaluate_at_end:  # MediaPipe and matplotlib are imported only now
      metrics["test"] = _module("facekp.eval.evaluate").evaluate_workdir(workdir)
  return metrics


def describe_config(config, config_file):
  """ "facekp/configs/tiny.py with data_dir='data/x'": the config file and the fields set apart
  from it."""
  if config_file is None:
    return "a config built in code"
  cli = _module("facekp.core.cli")
  try:
    base = cli.load_config_file(config_file)
  except Exception:  # pylint: disable=broad-except  (e.g. a config that takes an argument)
    return config_file
  changed = cli.config_differences(cli.config_as_dict(config), cli.config_as_dict(base))
  return config_file + (" with " + ", ".join(f"{field}={value!r}" for field, value in
                                             sorted(changed.items())) if changed else "")


def evaluate_model(*, workdir: typing.Union[str, os.PathLike],
                   data_dir: typing.Union[str, os.PathLike, None] = None, split: str = "test",
                   tta_flip: bool = False, pictures: bool = True) -> typing.Dict[str, typing.Any]:
  """Evaluates workdir/model.keras on a split of its own dataset or of another labelled facekp
  dataset (data_dir), as python -m facekp.eval.evaluate does: the model beside the mean shape
  and the teacher floor, aligned and perturbed. tta_flip also scores test-time flip averaging.

  Writes workdir/eval/<name>/metrics.json (and pictures/); returns those metrics.
  """
  evaluate = _module("facekp.eval.evaluate")
  return evaluate.evaluate_workdir(os.fspath(workdir),
                                   None if data_dir is None else os.fspath(data_dir), split,
                                   tta_flip=tta_flip, pictures=pictures)


def export_model(*, workdir: typing.Union[str, os.PathLike],
                 data_dir: typing.Union[str, os.PathLike, None] = None,
                 tflite: typing.Sequence[str] = DEFAULT_TFLITE, tta_flip: bool = False,
                 max_images: int = 64) -> typing.Dict[str, typing.Any]:
  """Exports a trained workdir as python -m facekp.serve.export does: workdir/export holds the
  SavedModel, the `tflite` variants (float32, dynamic_range, float16), each checked against the
  Keras model on max_images test faces, and the model card (model_card.json, README.md).
  tta_flip bakes test-time flip averaging into every export.

  Returns the export report (export_report.json): per export its size, difference from Keras
  in pixels and latency, and the keypoint record; facekp.load(workdir + "/export") serves it.
  """
  export = _module("facekp.serve.export")
  return export.export_workdir(os.fspath(workdir),
                               data_dir=None if data_dir is None else os.fspath(data_dir),
                               variants=tuple(tflite), max_images=max_images, tta_flip=tta_flip)
