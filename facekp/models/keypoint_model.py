"""Keypoint models: a backbone by name (any keras.applications model, or facekp's own "unet",
a small U-Net for learning from scratch at 128 px) and a keypoint head.

The model takes images as they come from the input pipeline and export (0..255, any numeric
dtype), runs the backbone's own preprocessing inside, and returns float32 keypoints [B, K, 2]
normalised to [0, 1] whatever the dtype policy. Saved models load with
`keras.models.load_model(path)` once this module is imported (its layers are registered).
"""
import functools
import re
import zipfile

import keras
import numpy as np
import tensorflow as tf

from facekp.core import workdir as workdir_lib

HEADS = ("dense", "flatten", "soft_argmax")


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
  return sorted(set(_applications()) | set(CUSTOM_BACKBONES))


def application(name):
  try:
    return {**_applications(), **CUSTOM_BACKBONES}[_normalise(name)]
  except KeyError:
    raise ValueError(
        f"unknown backbone {name!r}: use a keras.applications model name such as "
        f"mobilenet_v2 or efficientnet_v2_b0 (known: {', '.join(backbone_names())})") from None


# facekp's own backbone.

def _scale_to_unit(images):
  """0..255 -> [-1, 1], the preprocessing of facekp's own backbones."""
  return images / 127.5 - 1.0


def _conv_block(x, filters, name, blocks=2):
  """(3x3 conv -> GroupNorm -> ReLU) x blocks. GroupNorm, not BatchNorm: it computes the same
  function in training and inference, which matters with a few hundred images (11 steps an
  epoch leave BatchNorm's moving statistics far from the trained network's)."""
  for i in range(blocks):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            name=f"{name}_conv{i}")(x)
    x = keras.layers.GroupNormalization(min(8, filters), name=f"{name}_norm{i}")(x)
    x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
  return x


def unet(include_top=False, weights=None, input_shape=(128, 128, 3), width=16, depth=4,
         output_stride=4):
  """A small U-Net: a stride-2 stem, `depth` encoder stages (width * 2^i channels, up to 8x,
  halving the resolution after each), then a decoder that upsamples with skip connections back
  to `output_stride`. Every output cell sees the whole face (receptive field > 128 px at depth
  4) and keeps the position of fine detail, which a heatmap head needs; 0.6 M parameters at
  width 16. `weights`: None or a weights file (it has no pretrained weights)."""
  del include_top  # headless by construction
  images = keras.Input(input_shape, name="unet_input")
  x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(images)
  x = keras.layers.ReLU(name="stem_relu")(
      keras.layers.GroupNormalization(min(8, width), name="stem_norm")(x))
  skips, stride = {}, 2
  for i in range(depth):
    if i:
      x = keras.layers.MaxPooling2D(name=f"down{i}_pool")(x)
      stride *= 2
    x = _conv_block(x, width * min(2 ** i, 8), f"down{i}")
    skips[stride] = x
  while stride > output_stride:
    stride //= 2
    x = keras.layers.UpSampling2D(interpolation="bilinear", name=f"up{stride}_resize")(x)
    x = keras.layers.Concatenate(name=f"up{stride}_concat")([x, skips[stride]])
    x = _conv_block(x, skips[stride].shape[-1], f"up{stride}")
  model = keras.Model(images, x, name="unet")
  if weights is not None:
    model.load_weights(weights)
  return model


CUSTOM_BACKBONES = {"unet": (unet, _scale_to_unit)}


@keras.saving.register_keras_serializable(package="facekp")
class BackbonePreprocessing(keras.layers.Layer):
  """The named backbone's own `preprocess_input`, on 0..255 images of any numeric dtype."""

  def __init__(self, backbone, **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self._preprocess = application(backbone)[1]

  def call(self, images):
    return self._preprocess(keras.ops.cast(images, self.compute_dtype))

  def get_config(self):
    return {**super().get_config(), "backbone": self.backbone}


@keras.saving.register_keras_serializable(package="facekp")
class SoftArgmax(keras.layers.Layer):
  """Heatmap logits [B, h, w, K] -> expected (x, y) of each softmax map, normalised [B, K, 2].

  Cell (i, j) stands for the point ((j + 0.5) / w, (i + 0.5) / h), so a peaked map lands on
  its cell centre and a spread one anywhere in between (integral regression). With `prior_mean`
  ([K, 2] normalised) a trainable log-prior map per keypoint, a Gaussian of `prior_sigma` cells
  around that point, is added to the logits: before it has learnt anything the head predicts
  (about) the mean face, and the image moves each point from there.
  """

  def __init__(self, prior_mean=None, prior_sigma=1.0, **kwargs):
    super().__init__(**kwargs)
    self.prior_mean = None if prior_mean is None else np.asarray(prior_mean, np.float32).tolist()
    self.prior_sigma = float(prior_sigma)

  def build(self, input_shape):
    _, h, w, _ = input_shape
    self.grid = _cell_centres(h, w)
    if self.prior_mean is not None:
      cells = self.grid * np.array([w, h], np.float32)  # [h*w, 2] in cell units
      centres = np.asarray(self.prior_mean, np.float32) * np.array([w, h], np.float32)
      d2 = ((cells[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # [h*w, K]
      self.prior = self.add_weight(
          name="prior", shape=(h * w, len(centres)),
          initializer=keras.initializers.Constant(-0.5 * d2 / self.prior_sigma ** 2))

  def call(self, logits):
    logits = keras.ops.cast(logits, "float32")
    _, h, w, k = logits.shape
    flat = keras.ops.reshape(logits, (-1, h * w, k))
    if self.prior_mean is not None:
      flat = flat + self.prior
    probs = keras.ops.softmax(flat, axis=1)  # [B, h*w, K]
    return keras.ops.einsum("bnk,nc->bkc", probs, keras.ops.convert_to_tensor(self.grid))

  def get_config(self):
    return {**super().get_config(), "prior_mean": self.prior_mean,
            "prior_sigma": self.prior_sigma}


def _cell_centres(h, w):
  """[h*w, 2] normalised (x, y) of the cell centres, row-major like a reshaped [h, w] map."""
  ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
  return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


@keras.saving.register_keras_serializable(package="facekp")
class MeanOffset(keras.layers.Layer):
  """mean + scale * x: the head predicts each point's offset from the mean face in units of
  `scale` (of the image size), so its outputs are O(1) however tightly the faces are aligned.
  The mean is a (non-trainable) weight, so it travels with the weights."""

  def __init__(self, mean, scale, **kwargs):
    super().__init__(**kwargs)
    self.initial_mean = np.asarray(mean, np.float32).tolist()
    self.scale = float(scale)

  def build(self, input_shape):
    self.mean = self.add_weight(
        name="mean", shape=np.shape(self.initial_mean), trainable=False,
        initializer=keras.initializers.Constant(self.initial_mean))

  def call(self, offsets):
    return keras.ops.cast(offsets, "float32") * self.scale + self.mean

  def get_config(self):
    return {**super().get_config(), "mean": self.initial_mean, "scale": self.scale}


def _load_backbone(config):
  """The headless backbone with the configured weights, with clear errors for bad choices."""
  constructor, _ = application(config.backbone)
  weights = config.weights
  if weights in ("none", "", None):
    weights = None
  elif weights != "imagenet" and not tf.io.gfile.exists(weights):
    raise FileNotFoundError(
        f"weights={weights!r}: no such file (use imagenet, none, or the path of a "
        f"{config.backbone} no-top weights file)")
  kwargs = dict(config.get("backbone_kwargs", {}))
  if _normalise(config.backbone) in CUSTOM_BACKBONES:
    if weights == "imagenet":
      raise ValueError(f"backbone {config.backbone!r} has no ImageNet weights: use "
                       "--config.weights=none (or a weights file of the same model)")
    kwargs.setdefault("output_stride", config.feature_stride)
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
    if isinstance(e, (TypeError, ValueError)) and config.get("backbone_kwargs"):
      raise ValueError(f"backbone={config.backbone} with backbone_kwargs="
                       f"{dict(config.backbone_kwargs)}: {e}") from None
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
  """The seed's head: GAP -> Dense(head_units, relu) -> Dropout -> Dense(2K)."""
  x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
  x = keras.layers.Dense(config.head_units, activation="relu", name="fc")(x)
  x = keras.layers.Dropout(config.dropout, name="dropout")(x)
  return _keypoints_out(x, config, num_keypoints, mean_keypoints)


def _flatten_head(features, config, num_keypoints, mean_keypoints):
  """A linear read-out of the whole feature map (Flatten -> Dropout -> Dense(2K)): one weight per
  position and channel, so where a feature fires counts, unlike after global pooling."""
  x = keras.layers.Flatten(name="flatten")(features)
  x = keras.layers.Dropout(config.dropout, name="dropout")(x)
  return _keypoints_out(x, config, num_keypoints, mean_keypoints)


def _keypoints_out(x, config, num_keypoints, mean_keypoints):
  """Dense(2K) -> [K, 2] in float32; with a mean face, offsets from it in output_scale units,
  from a zero kernel: every face starts at the mean (random initial offsets of a whole image
  width would make silencing the ReLUs below the fastest way down the loss)."""
  kernel = "glorot_uniform" if mean_keypoints is None else "zeros"
  x = keras.layers.Dense(2 * num_keypoints, kernel_initializer=kernel, name="keypoints_flat")(x)
  x = keras.layers.Reshape((num_keypoints, 2), name="keypoints_xy")(x)
  if mean_keypoints is None and config.output_scale == 1.0:
    return keras.layers.Activation("linear", dtype="float32", name="keypoints")(x)
  if mean_keypoints is None:
    mean_keypoints = np.zeros((num_keypoints, 2), np.float32)
  return MeanOffset(mean_keypoints, config.output_scale, dtype="float32", name="keypoints")(x)


def _soft_argmax_head(features, config, num_keypoints, mean_keypoints):
  if features.shape[1] < 2:
    raise ValueError(f"the soft_argmax head needs a feature map of 2x2 or more, the backbone "
                     f"gives {features.shape[1]}x{features.shape[2]} at {config.image_size} px: "
                     "use a larger image_size or a smaller feature_stride")
  x = keras.layers.Dropout(config.dropout, name="dropout")(features)
  # From a zero kernel the prior alone decides the first predictions: the mean face.
  kernel = "glorot_uniform" if mean_keypoints is None else "zeros"
  logits = keras.layers.Conv2D(num_keypoints, 1, kernel_initializer=kernel, name="heatmaps")(x)
  return SoftArgmax(mean_keypoints, config.heatmap_prior_sigma, dtype="float32",
                    name="keypoints")(logits)


def create_model(config, num_keypoints, mean_keypoints=None):
  """Backbone `config.backbone` (weights `config.weights`) with head `config.head`.

  mean_keypoints: [K, 2] training mean; when given the dense and flatten heads predict offsets
  from it (in units of config.output_scale) and the soft-argmax head starts from a prior
  around it.
  """
  if config.head not in HEADS:
    raise ValueError(f"head={config.head!r}: choose one of {HEADS}")
  backbone = _truncate(_load_backbone(config), config.image_size, config.feature_stride)
  backbone.name = "backbone"
  if config.get("bn_momentum") is not None:
    for layer in backbone.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = float(config.bn_momentum)
  images = keras.Input((config.image_size, config.image_size, 3), name="images")
  features = backbone(BackbonePreprocessing(config.backbone, name="preprocess")(images))
  head = {"dense": _dense_head, "flatten": _flatten_head, "soft_argmax": _soft_argmax_head}
  keypoints = head[config.head](features, config, num_keypoints, mean_keypoints)
  return keras.Model(images, keypoints, name=f"facekp_{_normalise(config.backbone)}")


def backbone_of(model):
  return model.get_layer("backbone")


def estimate_batch_norm_statistics(model, images):
  """Sets every backbone BatchNorm's moving statistics to those of `images` (one batch)."""
  layers = batch_norm_layers(model)
  momenta = [layer.momentum for layer in layers]
  for layer in layers:
    layer.momentum = 0.0
  backbone_of(model)(model.get_layer("preprocess")(images), training=True)
  for layer, momentum in zip(layers, momenta):
    layer.momentum = momentum


def freeze_batch_norm(model):
  """BatchNorm in inference mode with fixed statistics and affine parameters, in training too."""
  for layer in batch_norm_layers(model):
    layer.trainable = False


def batch_norm_layers(model):
  return [layer for layer in backbone_of(model).layers
          if isinstance(layer, keras.layers.BatchNormalization)]


def load_model(workdir):
  """The workdir's model.keras; a clear error when it is missing or damaged."""
  model_path = workdir_lib.path(workdir, workdir_lib.MODEL)
  if not tf.io.gfile.exists(model_path):
    raise FileNotFoundError(f"{workdir} has no {workdir_lib.MODEL}: train it first "
                            "(python -m facekp.main --workdir=... --config=...)")
  if tf.io.gfile.stat(model_path).length == 0:
    raise ValueError(f"{model_path} is empty (a run was killed while saving it): run the same "
                     "training command again to write it anew")
  return load_keras_file(model_path)


_ZIP_MAGIC = b"PK\x03\x04"  # a .keras file is a zip archive


def load_keras_file(path):
  """A .keras model file, with a clear error when the file is not one (Keras reports any file
  it cannot open as a zip archive as "File not found")."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no such Keras model file")
  if tf.io.gfile.isdir(path):
    raise IsADirectoryError(f"{path} is a folder, not a Keras model file (.keras)")
  with tf.io.gfile.GFile(path, "rb") as f:
    magic = f.read(len(_ZIP_MAGIC))
  problem = None if magic == _ZIP_MAGIC else "not a zip archive"
  if problem is None:
    try:
      return keras.models.load_model(path)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as e:
      problem = ("a zip archive Keras cannot open" if "File not found" in str(e) else
                 " ".join(str(e).split())[:300])
  raise ValueError(f"{path} is not a valid Keras model file ({problem}): give a model that "
                   "facekp wrote (a workdir's model.keras)")
