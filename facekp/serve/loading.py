"""Readers of every model format: a workdir, a .keras file, a SavedModel or a .tflite file ->
one callable that takes uint8 faces and returns normalised keypoints."""
import os
import warnings

from google.protobuf import message
import numpy as np
import tensorflow as tf

from facekp.core import workdir as workdir_lib
from facekp.models import keypoint_model

SERVING_SIGNATURE = "serving_default"
EXPORT_MODEL = "saved_model"  # the model an export folder (facekp.serve.export) is loaded as


class KeypointModel:
  """A loaded keypoint model: `model(images uint8 [N, S, S, 3])` -> float32 [N, K, 2] in 0..1."""

  def __init__(self, fn, image_size, path):
    self._fn = fn
    self.image_size = int(image_size)
    self.path = path

  def __call__(self, images, batch_size=32):
    images = np.asarray(images, np.uint8)
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"{self.path} takes images of shape [N, {self.image_size}, "
                       f"{self.image_size}, 3], got {images.shape}")
    return np.concatenate([np.asarray(self._fn(images[i:i + batch_size]), np.float32)
                           for i in range(0, len(images), batch_size)])


def keras_model(model, path=""):
  image_size = model.input_shape[1]
  if image_size is None:
    raise ValueError(f"the model {path} does not fix its input size")
  call = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False))
  return KeypointModel(lambda x: call(tf.constant(x)), image_size, path)


def load_keras(path):
  return keras_model(keypoint_model.load_keras_file(path), path)


def _not_a_model(path, kind, error):
  return ValueError(f"{path} is not a valid {kind} ({' '.join(str(error).split())[:300]}): give "
                    "one that facekp.serve.export wrote")


def load_saved_model(path):
  try:
    signature = tf.saved_model.load(path).signatures[SERVING_SIGNATURE]
    image_size = signature.structured_input_signature[1]["images"].shape[1]
  except (OSError, ValueError, KeyError, TypeError, message.DecodeError,
          tf.errors.OpError) as e:
    raise _not_a_model(path, "facekp SavedModel", e) from None
  return KeypointModel(lambda x: signature(images=tf.constant(x))["keypoints"], image_size, path)


def load_tflite(path=None, content=None):
  """A TFLite model from a file or from flatbuffer bytes; runs through its serving signature."""
  if content is None:
    with tf.io.gfile.GFile(path, "rb") as f:
      content = f.read()
  with warnings.catch_warnings():
    # TF 2.19 points to ai_edge_litert, which is not part of the pinned dependency set.
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
    try:
      interpreter = tf.lite.Interpreter(model_content=content)
      runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
      image_size = runner.get_input_details()["images"]["shape"][1]
    except (ValueError, KeyError, RuntimeError) as e:
      raise _not_a_model(path or "the model", "facekp TFLite model", e) from None
  return KeypointModel(lambda x: runner(images=x)["keypoints"], image_size, path)



def model_file(path):
  """The model file or folder that `load` reads for `path`: the SavedModel of an export folder,
  model.keras of a workdir, else `path` itself."""
  path = str(os.fspath(path)).rstrip("/") or "/"
  if path.endswith((".tflite", ".keras")):
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: no such model file")
    return path
  if tf.io.gfile.exists(f"{path}/saved_model.pb"):
    return path
  if tf.io.gfile.exists(f"{path}/{EXPORT_MODEL}/saved_model.pb"):
    return f"{path}/{EXPORT_MODEL}"
  if tf.io.gfile.exists(workdir_lib.path(path, workdir_lib.MODEL)):
    return workdir_lib.path(path, workdir_lib.MODEL)
  raise FileNotFoundError(f"{path} is not a keypoint model: expected a workdir (with "
                          "model.keras), an export folder (with saved_model/), a .keras file, a "
                          "SavedModel directory or a .tflite file")


def load(path):
  """A workdir, an export folder, a .keras file, a SavedModel directory or a .tflite file ->
  KeypointModel (its .path is model_file(path))."""
  path = model_file(path)
  if path.endswith(".tflite"):
    return load_tflite(path)
  if path.endswith(f"/{workdir_lib.MODEL}"):  # a workdir's: says when a killed save emptied it
    return keras_model(keypoint_model.load_model(os.path.dirname(path)), path)
  if path.endswith(".keras"):
    return load_keras(path)
  return load_saved_model(path)
