"""Keypoint-true augmentation of whole batches, for the accelerator (inside the train step).

Every example draws its own parameters from one stateless seed, so a step's augmentation is a
pure function of (batch, seed): reproducible, and compilable with XLA (jit_compile=True).

Conventions: keypoints are normalised (x / W, y / H) continuous coordinates, a pixel's centre at
(i + 0.5) / W. A horizontal flip maps x to W - x (1 - x normalised) and moves slot
flip_permutation[j] into slot j (facekp.core.schema.Schema.flip_permutation).

The operations, in order (each off when its config field is 0):
  - geometry: a horizontal flip, a rotation about the image centre, a zoom about the image centre
    and a translation, composed into ONE affine warp applied to the image (bilinear, sampled at
    pixel centres) and to the keypoints by the same transform (the flip through
    facekp.core.keypoints.mirror). A flip alone is an exact mirror of the pixels. Outside the frame
    the fill mode is "reflect": the image mirrored about its edges, the edge pixel repeated
    (... c b a | a b c ... : keras.layers.RandomRotation's "reflect", OpenCV's BORDER_REFLECT),
    the same fill that facekp.data.align gives a crop reaching past its photo, so training sees
    the borders that prediction will see, and no streaks of repeated edge pixels that the
    model could learn as a cue.
  - keypoints never leave the frame: per example, when the drawn rotation/zoom/translation would
    push a keypoint that lies inside the frame out of it, the transform is shrunk towards the
    identity (angle, zoom - 1 and shift scaled by the largest of 1, 7/8, ..., 0 that keeps every
    such keypoint inside). Ranges small enough for the face never trigger it; large ones are
    tamed rather than producing labels the image cannot show. Keypoints already outside stay
    where the transform puts them.
  - brightness: + delta, delta uniform in +-brightness * 255.
  - contrast: each channel's distance from its mean times a factor uniform in 1 +- contrast.
  - values clipped to 0..255.
  - occlusion: with probability `occlusion`, a rectangle of uniform random grey, each side
    uniform in (0.5 .. 1) * occlusion_size * image side, centred anywhere in the image. Keypoints
    under it keep their labels: the position is still known, and the model is meant to infer an
    occluded point from the rest of the face (as MediaPipe does).
"""
import math

import ml_collections
import tensorflow as tf

from facekp.core import keypoints as keypoints_lib

FIELDS = ("flip", "brightness", "contrast", "rotation", "scale", "translate", "occlusion",
          "occlusion_size")
_SHRINK_STEPS = 8  # candidate shrink factors 1, 7/8, ..., 1/8, 0
_RNG = "philox"  # the same random bits on CPU, GPU and under XLA


def make_config(**fields):
  """An augmentation config with every field off (0) except those given."""
  unknown = set(fields) - set(FIELDS)
  if unknown:
    raise ValueError(f"unknown augmentation fields {sorted(unknown)}; known: {FIELDS}")
  return ml_collections.ConfigDict({name: float(fields.get(name, 0.0)) for name in FIELDS})


def check_config(cfg):
  for name in FIELDS:
    value = getattr(cfg, name, None)
    if value is None:
      raise ValueError(f"augmentation config has no field {name!r} (fields: {FIELDS})")
    high = 180 if name == "rotation" else 1
    if not 0 <= value <= high or (name == "scale" and value == 1):
      raise ValueError(f"augmentation {name}={value} is outside 0..{high}"
                       + (" (a zoom of 1 - scale must stay above 0)" if name == "scale" else ""))


def _split(seed, num):
  """`num` new seeds from `seed` (not tf.random.split: XLA derives other seeds from large ones)."""
  return tf.random.stateless_uniform([num, 2], seed=seed, minval=None, maxval=None,
                                     dtype=tf.int32, alg=_RNG)


def _uniform(seed, batch, low, high):
  """[batch] floats uniform in [low, high), built from random integer bits: XLA's and TF's
  kernels draw the same integers from a seed but turn them into floats differently."""
  bits = tf.random.stateless_uniform([batch], seed=seed, minval=None, maxval=None,
                                     dtype=tf.int32, alg=_RNG)
  unit = tf.cast(tf.bitwise.right_shift(tf.bitcast(bits, tf.uint32), 8), tf.float32) * 2.0**-24
  return low + (high - low) * unit


CHUNK = 32  # images whose intermediates fit a CPU's cache together (128 x 128 x 3 float32 each)


@tf.autograph.experimental.do_not_convert  # only Python branches on the config
def augment_batch(images, keypoints, aug_config, seed, flip_permutation, chunk_size=CHUNK):
  """Augments a batch: (images float32 [B,S,S,3] in 0..255, keypoints float32 [B,K,2] normalised).

  Each example's parameters are drawn for the whole batch at once; the pixels are then changed
  `chunk_size` images at a time, so that a chunk's intermediate images stay in the processor's
  cache and the cost per image does not grow with the batch. The result is the same either way.
  Under XLA (jit_compile) pass chunk_size=0, the whole batch at once: XLA fuses the operations
  (no large intermediates), and a loop over chunks only takes its parallelism away.

  Args:
    images: [B,H,W,3], uint8 or float in 0..255.
    keypoints: [B,K,2] normalised (x, y).
    aug_config: ConfigDict with the fields of FIELDS (see the module docstring).
    seed: int32/int64 tensor [2]; give every step (and every replica) its own, for example
      tf.stack([config.seed, step]).
    flip_permutation: the schema's flip permutation (facekp.core.schema.Schema.flip_permutation).
    chunk_size: images whose pixels are changed together; 0: the whole batch.
  """
  check_config(aug_config)
  if len(flip_permutation) != keypoints.shape[1]:
    raise ValueError(f"flip_permutation {tuple(flip_permutation)} does not match "
                     f"{keypoints.shape[1]} keypoints")
  keypoints = tf.cast(keypoints, tf.float32)
  params, keypoints = draw_parameters(tf.shape(images), keypoints, aug_config, seed,
                                      flip_permutation)
  pixels = lambda chunk, chunk_params: augment_pixels(chunk, chunk_params, aug_config)
  if not chunk_size:
    return pixels(images, params), keypoints
  return in_chunks(pixels, images, params, chunk_size), keypoints


def draw_parameters(image_shape, keypoints, cfg, seed, flip_permutation):
  """({name: [B, ...] tensor} of every example's augmentation, the keypoints [B,K,2] moved)."""
  batch, height, width = image_shape[0], image_shape[1], image_shape[2]
  seeds = _split(seed, 4)
  params, keypoints = _draw_geometry(batch, width, height, keypoints, cfg, seeds[0],
                                     flip_permutation)
  if cfg.brightness:
    params["brightness"] = _uniform(seeds[1], batch, -cfg.brightness, cfg.brightness) * 255.0
  if cfg.contrast:
    params["contrast"] = _uniform(seeds[2], batch, 1.0 - cfg.contrast, 1.0 + cfg.contrast)
  if cfg.occlusion:
    params.update(_draw_occlusion(batch, width, height, cfg, seeds[3]))
  return params, keypoints


def augment_pixels(images, params, cfg):
  """The images [B,H,W,3] with the augmentation of draw_parameters applied: float32 0..255."""
  if "matrix" in params:
    images = warp(images, params["matrix"], params["offset"])
  elif "flip" in params:
    width = tf.shape(images)[2]
    columns = tf.where(params["flip"][:, None], tf.range(width - 1, -1, -1), tf.range(width))
    images = tf.gather(images, columns, axis=2, batch_dims=1)
  images = tf.cast(images, tf.float32)
  if cfg.brightness:
    images = images + params["brightness"][:, None, None, None]
  if cfg.contrast:
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    images = (images - mean) * params["contrast"][:, None, None, None] + mean
  images = tf.clip_by_value(images, 0.0, 255.0)
  if cfg.occlusion:
    images = _occlude(images, params)
  return images


def in_chunks(fn, images, params, chunk_size):
  """fn(images, params) of a whole batch, computed chunk_size examples at a time (a batch of at
  most chunk_size in one call): fn must treat every example on its own."""
  if images.shape[0] is not None and images.shape[0] <= chunk_size:
    return fn(images, params)
  batch = tf.shape(images)[0]
  chunks = (batch + chunk_size - 1) // chunk_size
  padding = chunks * chunk_size - batch
  pad = lambda x: tf.concat([x, tf.repeat(x[:1], padding, axis=0)], axis=0)  # batch >= 1
  split = lambda x: tf.reshape(pad(x), tf.concat([[chunks, chunk_size], tf.shape(x)[1:]], axis=0))
  out = tf.map_fn(lambda args: fn(*args), (split(images), {k: split(v) for k, v in
                                                               params.items()}),
                  fn_output_signature=tf.float32, parallel_iterations=1)
  return tf.reshape(out, tf.concat([[chunks * chunk_size], tf.shape(out)[2:]], axis=0))[:batch]


def _draw_geometry(batch, width, height, keypoints, cfg, seed, flip_permutation):
  """Flip, rotation, zoom and translation as one warp: its parameters ("flip" alone, or "matrix"
  and "offset") and the keypoints moved by it."""
  if not (cfg.flip or cfg.rotation or cfg.scale or cfg.translate):
    return {}, keypoints
  seeds = _split(seed, 5)
  if cfg.flip:
    flip = _uniform(seeds[0], batch, 0.0, 1.0) < cfg.flip
    keypoints = tf.where(flip[:, None, None],
                         keypoints_lib.mirror(keypoints, flip_permutation), keypoints)
  else:
    flip = tf.zeros([batch], tf.bool)
  if not (cfg.rotation or cfg.scale or cfg.translate):
    return {"flip": flip}, keypoints

  size = tf.cast(tf.stack([width, height]), tf.float32)
  angle = _uniform(seeds[1], batch, -cfg.rotation, cfg.rotation) * (math.pi / 180.0)
  zoom = _uniform(seeds[2], batch, -cfg.scale, cfg.scale)
  shift = tf.stack([_uniform(seeds[3], batch, -cfg.translate, cfg.translate),
                    _uniform(seeds[4], batch, -cfg.translate, cfg.translate)], axis=-1)
  # The keypoints are mirrored already; the image's warp mirrors its pixels first.
  no_flip = tf.zeros_like(flip)
  points = keypoints_lib.to_pixels(keypoints, width, height)
  shrink = _largest_shrink_in_frame(points, size, angle, zoom, shift)
  angle, zoom, shift = angle * shrink, zoom * shrink, shift * shrink[:, None]
  points = _transform_points(*_affine(size, no_flip, angle, zoom, shift), points)
  matrix, offset = _affine(size, flip, angle, zoom, shift)
  return ({"matrix": matrix, "offset": offset},
          keypoints_lib.to_normalised(points, width, height))


def _affine(size, flip, angle, zoom, shift):
  """Map p -> matrix @ p + offset in pixel coordinates: mirror (x -> W - x) where `flip`, then
  rotate by `angle` and zoom by 1 + `zoom` about the centre, then shift by `shift` * (W, H).
  flip, angle, zoom: [...]; shift: [..., 2]; returns matrix [..., 2, 2] and offset [..., 2]."""
  sign = tf.where(flip, -1.0, 1.0)
  cos, sin = tf.cos(angle) * (1.0 + zoom), tf.sin(angle) * (1.0 + zoom)
  matrix = tf.reshape(tf.stack([cos * sign, -sin, sin * sign, cos], axis=-1),
                      tf.concat([tf.shape(angle), [2, 2]], axis=0))
  centre = size / 2.0
  return matrix, centre - tf.linalg.matvec(matrix, centre) + shift * size


def _largest_shrink_in_frame(points, size, angle, zoom, shift):
  """Per example, the largest factor in 1, 7/8, ..., 0 by which the transform can be scaled
  towards the identity and keep every keypoint that is inside the frame inside it."""
  factors = tf.linspace(1.0, 0.0, _SHRINK_STEPS + 1)  # [L]; 0 (the identity) always fits
  scaled = lambda t: factors[:, None] * t[None]  # [L, B]
  matrix, offset = _affine(size, tf.zeros(tf.shape(scaled(angle)), tf.bool), scaled(angle),
                           scaled(zoom), factors[:, None, None] * shift[None])
  inside = lambda p: tf.reduce_all((p >= 0.0) & (p <= size), axis=-1)
  fits = tf.reduce_all(inside(_transform_points(matrix, offset, points)) | ~inside(points),
                       axis=-1)  # [L, B]
  return tf.gather(factors, tf.argmax(tf.cast(fits, tf.int32), axis=0))


def _transform_points(matrix, offset, points):
  """matrix [..., 2, 2] and offset [..., 2] applied to points [..., K, 2]."""
  return tf.linalg.matvec(matrix[..., None, :, :], points) + offset[..., None, :]


def _reflect(u, extent):
  """Continuous coordinates folded into [0, extent] by mirroring about 0 and extent."""
  return extent - tf.abs(extent - tf.math.floormod(u, 2.0 * extent))


def warp(images, matrix, offset):
  """Bilinear resampling: output pixel centre p shows input point matrix^-1 (p - offset); outside
  the frame, the image mirrored about its edges (fill mode "reflect"). Returns float32."""
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  inverse = tf.linalg.inv(matrix)[..., None, None]  # [B, 2, 2, 1, 1]
  xs = (tf.range(width, dtype=tf.float32) + 0.5 - offset[:, 0:1])[:, None, :]  # [B, 1, W]
  ys = (tf.range(height, dtype=tf.float32) + 0.5 - offset[:, 1:2])[:, :, None]  # [B, H, 1]
  # Source points, mirrored into the frame, in index coordinates (pixel i's centre at i) for
  # the interpolation. Within half a pixel of an edge the neighbour across it is the edge pixel
  # itself (its mirror image), which clipping the index gives.
  x = _reflect(inverse[:, 0, 0] * xs + inverse[:, 0, 1] * ys, tf.cast(width, tf.float32)) - 0.5
  y = _reflect(inverse[:, 1, 0] * xs + inverse[:, 1, 1] * ys, tf.cast(height, tf.float32)) - 0.5
  x0, y0 = tf.floor(x), tf.floor(y)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  col0 = tf.clip_by_value(tf.cast(x0, tf.int32), 0, width - 1)
  col1 = tf.clip_by_value(tf.cast(x0, tf.int32) + 1, 0, width - 1)
  row0 = tf.clip_by_value(tf.cast(y0, tf.int32), 0, height - 1) * width
  row1 = tf.clip_by_value(tf.cast(y0, tf.int32) + 1, 0, height - 1) * width
  first = tf.range(batch)[:, None, None] * (height * width)
  flat = tf.reshape(images, [-1, shape[3]])
  pixels = lambda row, col: tf.cast(tf.gather(flat, first + row + col), tf.float32)
  top = _lerp(pixels(row0, col0), pixels(row0, col1), wx)
  bottom = _lerp(pixels(row1, col0), pixels(row1, col1), wx)
  return _lerp(top, bottom, wy)


def _lerp(a, b, t):
  return a + (b - a) * t


def _draw_occlusion(batch, width, height, cfg, seed):
  """Per example, with probability cfg.occlusion, one rectangle of a random grey level."""
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  seeds = _split(seed, 6)
  return {
      "occlude": _uniform(seeds[0], batch, 0.0, 1.0) < cfg.occlusion,
      "half_h": _uniform(seeds[1], batch, 0.5, 1.0) * cfg.occlusion_size * h / 2.0,
      "half_w": _uniform(seeds[2], batch, 0.5, 1.0) * cfg.occlusion_size * w / 2.0,
      "cy": _uniform(seeds[3], batch, 0.0, 1.0) * h,
      "cx": _uniform(seeds[4], batch, 0.0, 1.0) * w,
      "grey": _uniform(seeds[5], batch, 0.0, 255.0)}


def _occlude(images, params):
  """The rectangles of _draw_occlusion painted in."""
  shape = tf.shape(images)
  ys = tf.range(tf.cast(shape[1], tf.float32))[None, :] + 0.5  # pixel centres
  xs = tf.range(tf.cast(shape[2], tf.float32))[None, :] + 0.5
  rows = tf.abs(ys - params["cy"][:, None]) < params["half_h"][:, None]  # [B, H]
  cols = tf.abs(xs - params["cx"][:, None]) < params["half_w"][:, None]  # [B, W]
  mask = rows[:, :, None] & cols[:, None, :] & params["occlude"][:, None, None]
  return tf.where(mask[..., None], params["grey"][:, None, None, None], images)
