"""Keypoint models: a keras.applications backbone by name and a regression head.

The model takes images as they come from the input pipeline and export (0..255, any numeric
dtype), runs the backbone's own preprocessing inside, and returns float32 keypoints [B, K, 2]
normalised to [0, 1] whatever the dtype policy. Saved models load with
`keras.models.load_model(path)` once this module is imported (its layers are registered).
"""
import functools
import re

import keras
import numpy as np
import tensorflow as tf

HEADS = ("dense", "soft_argmax")


class WeightsUnavailableError(RuntimeError):
  """The ImageNet weights could not be downloaded (offline) and are not in the Keras cache."""


@functools.lru_cache(maxsize=None)
def _applications():
  """{normalised name: (constructor, preprocess_input)} for every keras.applications model."""
  found = {}
  for module_name in dir(keras.applications):
    module = getattr(keras.applications, module_name)
    if module_name.startswith("_") or not hasattr(module, "preprocess_input"):
      continue
    for attr in dir(module):
      if attr[0].isupper():
        found.setdefault(_normalise(attr), (getattr(module, attr), module.preprocess_input))
  return found


def _normalise(name):
  return re.sub(r"[^a-z0-9]", "", name.lower())


def backbone_names():
  return sorted(_applications())


def _application(name):
  try:
    return _applications()[_normalise(name)]
  except KeyError:
    raise ValueError(
        f"unknown backbone {name!r}: use a keras.applications model name such as "
        f"mobilenet_v2 or efficientnet_v2_b0 (known: {', '.join(backbone_names())})") from None


@keras.saving.register_keras_serializable(package="facekp")
class BackbonePreprocessing(keras.layers.Layer):
  """The named backbone's own `preprocess_input`, on 0..255 images of any numeric dtype."""

  def __init__(self, backbone, **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self._preprocess = _application(backbone)[1]

  def call(self, images):
    return self._preprocess(keras.ops.cast(images, self.compute_dtype))

  def get_config(self):
    return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="facekp")
class SoftArgmax(keras.layers.Layer):
  """Heatmap logits [B, h, w, K] -> expected (x, y) of each softmax map, normalised [B, K, 2].

  Cell (i, j) stands for the point ((j + 0.5) / w, (i + 0.5) / h), so a peaked map lands on
  its cell centre and a spread one anywhere in between (integral regression).
  """

  def call(self, logits):
    logits = keras.ops.cast(logits, "float32")
    _, h, w, k = logits.shape
    flat = keras.ops.reshape(keras.ops.transpose(logits, (0, 3, 1, 2)), (-1, k, h * w))
    probs = keras.ops.softmax(flat, axis=-1)
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)  # [h*w, 2]
    return keras.ops.matmul(probs, keras.ops.convert_to_tensor(grid))


def _load_backbone(config):
  """The headless backbone with the configured weights, with clear errors for bad choices."""
  constructor, _ = _application(config.backbone)
  weights = config.weights
  if weights in ("none", "", None):
    weights = None
  elif weights != "imagenet" and not tf.io.gfile.exists(weights):
    raise FileNotFoundError(
        f"weights={weights!r}: no such file (use imagenet, none, or the path of a "
        f"{config.backbone} no-top weights file)")
  kwargs = dict(config.get("backbone_kwargs", {}))
  try:
    return constructor(include_top=False, weights=weights,
                       input_shape=(config.image_size, config.image_size, 3), **kwargs)
  except Exception as e:  # keras.utils.get_file raises a bare Exception when offline.
    if weights == "imagenet" and "URL fetch failure" in str(e):
      raise WeightsUnavailableError(
          f"could not download the ImageNet weights of {config.backbone} ({e}). This machine "
          "seems offline and the file is not in the Keras cache (~/.keras/models or "
          "$KERAS_HOME/models). Pass a local weights file with --config.weights=PATH, copy the "
          "file into that cache, or train from scratch with --config.weights=none.") from e
    raise


def _truncate(backbone, image_size, stride):
  """The backbone up to its last layer at `stride` (image_size / stride cells per side)."""
  cells = image_size // stride
  if backbone.output.shape[1] == cells:
    return backbone
  at_stride = [layer for layer in backbone.layers
               if len(layer.output.shape) == 4 and layer.output.shape[1] == cells]
  if not at_stride or image_size % stride:
    raise ValueError(f"{backbone.name} has no feature map at stride {stride} for "
                     f"{image_size}x{image_size} inputs")
  return keras.Model(backbone.inputs, at_stride[-1].output, name=backbone.name)


def _dense_head(features, config, num_keypoints, mean_keypoints):
  x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
  x = keras.layers.Dense(config.head_units, activation="relu", name="fc")(x)
  x = keras.layers.Dropout(config.dropout, name="dropout")(x)
  bias = "zeros"
  if mean_keypoints is not None:
    bias = keras.initializers.Constant(np.asarray(mean_keypoints, np.float32).ravel().tolist())
  x = keras.layers.Dense(2 * num_keypoints, bias_initializer=bias, name="keypoints_flat")(x)
  x = keras.layers.Reshape((num_keypoints, 2), name="keypoints_xy")(x)
  return keras.layers.Activation("linear", dtype="float32", name="keypoints")(x)


def _soft_argmax_head(features, config, num_keypoints):
  if features.shape[1] < 2:
    raise ValueError(f"the soft_argmax head needs a feature map of 2x2 or more, the backbone "
                     f"gives {features.shape[1]}x{features.shape[2]} at {config.image_size} px: "
                     "use a larger image_size or a smaller feature_stride")
  x = keras.layers.Dropout(config.dropout, name="dropout")(features)
  logits = keras.layers.Conv2D(num_keypoints, 1, name="heatmaps")(x)
  return SoftArgmax(dtype="float32", name="keypoints")(logits)


def create_model(config, num_keypoints, mean_keypoints=None):
  """Backbone `config.backbone` (weights `config.weights`) with head `config.head`.

  mean_keypoints: [K, 2] training mean; when given the dense head's output bias starts there,
  so the head learns offsets from the mean face.
  """
  if config.head not in HEADS:
    raise ValueError(f"head={config.head!r}: choose one of {HEADS}")
  if mean_keypoints is not None and config.head != "dense":
    raise ValueError("init_output_at_mean applies to the dense head only")
  backbone = _truncate(_load_backbone(config), config.image_size, config.feature_stride)
  backbone.name = "backbone"
  if config.get("bn_momentum") is not None:
    for layer in backbone.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = float(config.bn_momentum)
  images = keras.Input((config.image_size, config.image_size, 3), name="images")
  features = backbone(BackbonePreprocessing(config.backbone, name="preprocess")(images))
  if config.head == "dense":
    keypoints = _dense_head(features, config, num_keypoints, mean_keypoints)
  else:
    keypoints = _soft_argmax_head(features, config, num_keypoints)
  return keras.Model(images, keypoints, name=f"facekp_{_normalise(config.backbone)}")


def backbone_of(model):
  return model.get_layer("backbone")


def batch_norm_layers(model):
  return [layer for layer in backbone_of(model).layers
          if isinstance(layer, keras.layers.BatchNormalization)]
