"""The keypoint coordinate contract: the one place that converts and mirrors keypoints.

Coordinates are continuous: pixel column i covers [i, i + 1), so its centre is at x = i + 0.5
and an image of width W spans [0, W]. Normalised coordinates divide by the image's width and
height, so they lie in [0, 1] and do not change when the image is resized. A horizontal flip
maps x to W - x (1 - x normalised) and moves the keypoint of slot flip_permutation[j] into slot
j (facekp.core.schema.Schema.flip_permutation; a flip is its own inverse, so the same call maps
points found on a mirrored image back).

Every function takes NumPy arrays or TensorFlow tensors of shape [..., K, 2] (x, y) and returns
the same kind. Datasets and exports record `metadata(...)`, so a reader can check that what it
feeds a model is what the model was trained on.
"""
import re

import numpy as np
import tensorflow as tf

CONVENTION = "continuous"  # pixel i's centre at i + 0.5; the image spans [0, W] x [0, H]
CROP_AS_STORED = "as_stored"


def crop_method(align_size):
  """How a dataset's images were cropped: facekp's FFHQ-style align at S px, or as stored."""
  return f"facekp_align_{int(align_size)}" if align_size else CROP_AS_STORED


def is_aligned_crop(crop):
  """Whether a crop method is facekp's FFHQ-style align, at any size (what predict feeds)."""
  return re.fullmatch(r"facekp_align_\d+", str(crop)) is not None


def metadata(crop, input_size=None):
  """What a dataset or an exported model records about its keypoints."""
  record = {"coordinates": CONVENTION, "normalised_by": "image width and height", "crop": crop}
  if input_size is not None:
    record["input_size"] = int(input_size)
  return record


def _is_tf(points):
  return isinstance(points, (tf.Tensor, tf.Variable))


def _scale(points, width, height):
  if _is_tf(points):
    return tf.cast(tf.stack([width, height]), points.dtype)
  return np.array([width, height], np.float64)


def to_pixels(points, width, height=None):
  """Normalised [..., K, 2] -> pixels of a width x height image (height defaults to width)."""
  height = width if height is None else height
  if not _is_tf(points):
    points = np.asarray(points, np.float64)
  return points * _scale(points, width, height)


def to_normalised(points_px, width, height=None):
  """Pixels of a width x height image [..., K, 2] -> normalised (height defaults to width)."""
  height = width if height is None else height
  if not _is_tf(points_px):
    points_px = np.asarray(points_px, np.float64)
  return points_px / _scale(points_px, width, height)


def mirror(points, flip_permutation, width=1.0):
  """The points of a horizontally mirrored image: x -> width - x, slots swapped.

  width=1.0 for normalised points, the image width for pixels. Mirroring twice is the identity.
  """
  permutation = list(flip_permutation)
  if _is_tf(points):
    x, y = tf.unstack(tf.gather(points, permutation, axis=-2), axis=-1)
    return tf.stack([tf.cast(width, x.dtype) - x, y], axis=-1)
  points = np.array(np.asarray(points)[..., permutation, :], np.float64)
  points[..., 0] = width - points[..., 0]
  return points
