"""facekp.input.augment: geometry checked on real pixels (coloured dots painted at the keypoints are found
again after augmentation), photometric ops by their formulas, and every op eager = graph = XLA =
tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from facekp.core import keypoints as keypoints_lib
from facekp.core import schema as schema_lib
from facekp.input import augment

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
PERM = SCHEMA.flip_permutation
SIZE = 64
# One colour per slot; any two are at least 45 degrees apart, so blending with the black
# background or a bilinear neighbour never turns one into another.
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)
# Nose, right eye, right mouth corner, left eye, left mouth corner of a frontal face, in pixels.
FACE = np.array([[32.3, 36.1], [20.7, 24.2], [23.1, 46.4], [43.6, 23.8], [41.2, 46.7]])


def _paint(keypoints, size):
  """Images [B,S,S,3] uint8, black with a Gaussian dot of slot k's colour at keypoint k."""
  centres = np.arange(size) + 0.5
  images = np.zeros((len(keypoints), size, size, 3), np.float32)
  for image, points in zip(images, keypoints_lib.to_pixels(keypoints, size)):
    for colour, (x, y) in zip(COLOURS, points):
      blob = np.exp(-((centres[None, :] - x) ** 2 + (centres[:, None] - y) ** 2) / (2 * 1.2**2))
      image += blob[..., None] * colour * 255
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _faces(batch, rng, size=SIZE, jitter=3.0):
  """Dot images of faces jittered around FACE, and their normalised keypoints [B,K,2]."""
  points = FACE * size / SIZE + rng.uniform(-jitter, jitter, (batch,) + FACE.shape)
  keypoints = keypoints_lib.to_normalised(points, size).astype(np.float32)
  return _paint(keypoints, size), keypoints


def _dot_centroids(image, near, radius=4.0):
  """[colours, 2] intensity-weighted centroid (pixel coordinates) of each colour's pixels within
  `radius` of the point `near` (the reflected fill can show mirrored copies of dots far away),
  and [colours] their total weight."""
  image = np.asarray(image, np.float64)
  norm = np.linalg.norm(image, axis=-1)
  centres = np.arange(image.shape[0]) + 0.5
  xs, ys = np.meshgrid(centres, centres)
  close = (xs - near[0]) ** 2 + (ys - near[1]) ** 2 <= radius ** 2
  found, weights = [], []
  for colour in COLOURS:
    cosine = image @ colour / np.linalg.norm(colour) / np.maximum(norm, 1e-6)
    weight = np.where(close & (norm > 10) & (cosine > 0.97), norm, 0.0)
    total = max(weight.sum(), 1e-9)
    found.append([(weight * xs).sum() / total, (weight * ys).sum() / total])
    weights.append(weight.sum())
  return np.array(found), np.array(weights)


def _slot_colours(images, keypoints):
  """Per example, the colour of the dot found at each output keypoint and its distance from
  the keypoint in pixels."""
  size = images.shape[2]
  colours, errors = [], []
  for image, points in zip(np.asarray(images), keypoints_lib.to_pixels(keypoints, size)):
    row_colours, row_errors = [], []
    for point in points:
      centroids, weights = _dot_centroids(image, point)
      best = int(np.argmax(weights))
      row_colours.append(best)
      row_errors.append(np.linalg.norm(centroids[best] - point))
    colours.append(row_colours)
    errors.append(row_errors)
  return np.array(colours), np.array(errors)


def _augment(images, keypoints, seed=0, **fields):
  return augment.augment_batch(tf.constant(images), tf.constant(keypoints),
                               augment.make_config(**fields), tf.constant([seed, 7]), PERM)


def test_all_off_is_identity():
  images, keypoints = _faces(4, np.random.default_rng(0))
  out_images, out_points = _augment(images, keypoints)
  assert out_images.dtype == tf.float32
  np.testing.assert_array_equal(out_images, images.astype(np.float32))
  np.testing.assert_array_equal(out_points, keypoints)


def test_flip_mirrors_pixels_and_moves_each_slot_to_its_partners_dot():
  images, keypoints = _faces(6, np.random.default_rng(1))
  out_images, out_points = _augment(images, keypoints, flip=1.0)
  np.testing.assert_array_equal(out_images, images[:, :, ::-1].astype(np.float32))
  colours, errors = _slot_colours(out_images, out_points)
  np.testing.assert_array_equal(colours, np.tile(PERM, (6, 1)))
  assert errors.max() < 0.05


def test_flip_puts_the_left_eye_slot_on_the_right_eye_position():
  _, keypoints = _faces(3, np.random.default_rng(2))
  right_eye, left_eye = SCHEMA.eye_slots
  _, out_points = _augment(np.zeros((3, SIZE, SIZE, 3), np.uint8), keypoints, flip=1.0)
  np.testing.assert_allclose(out_points[:, right_eye, 0], 1.0 - keypoints[:, left_eye, 0])
  np.testing.assert_allclose(out_points[:, right_eye, 1], keypoints[:, left_eye, 1])
  np.testing.assert_allclose(out_points[:, left_eye, 0], 1.0 - keypoints[:, right_eye, 0])


def test_flip_twice_is_the_identity():
  images, keypoints = _faces(4, np.random.default_rng(3))
  once = _augment(images, keypoints, seed=1, flip=1.0)
  twice = _augment(once[0].numpy(), once[1].numpy(), seed=2, flip=1.0)
  np.testing.assert_array_equal(twice[0], images.astype(np.float32))
  np.testing.assert_allclose(twice[1], keypoints, atol=1e-6)


def test_flip_probability_flips_some_examples_and_not_others():
  images, keypoints = _faces(32, np.random.default_rng(4))
  out_images, _ = _augment(images, keypoints, flip=0.5)
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out_images.numpy(), images)]
  kept = [np.array_equal(o, i) for o, i in zip(out_images.numpy(), images)]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 4 < sum(flipped) < 28


@pytest.mark.parametrize("fields", [
    dict(rotation=25.0),
    dict(scale=0.2),
    dict(translate=0.1),
    dict(flip=1.0, rotation=20.0, scale=0.15, translate=0.08),
    dict(flip=0.5, rotation=20.0, scale=0.15, translate=0.08),
], ids=["rotation", "scale", "translate", "flip+affine", "half-flipped+affine"])
def test_dots_are_found_at_the_augmented_keypoints(fields):
  images, keypoints = _faces(16, np.random.default_rng(5))
  out_images, out_points = _augment(images, keypoints, seed=3, **fields)
  colours, errors = _slot_colours(out_images, out_points)
  assert errors.max() < 0.25, errors.max()
  identity, flipped = tuple(range(len(PERM))), tuple(PERM)
  allowed = {0.0: {identity}, 1.0: {flipped}, 0.5: {identity, flipped}}[fields.get("flip", 0.0)]
  assert {tuple(c) for c in colours} == allowed
  moved = np.abs(out_points.numpy() - keypoints).max(axis=(1, 2)) * SIZE
  assert np.median(moved) > 1.0  # the transform really moved the faces


def test_large_transforms_are_shrunk_so_keypoints_stay_in_the_frame():
  rng = np.random.default_rng(6)
  _, keypoints = _faces(32, rng, jitter=0.0)
  # Push each face into a random corner, its outermost dots 3 px from the borders.
  low, high = keypoints.min(axis=1, keepdims=True), keypoints.max(axis=1, keepdims=True)
  margin = 3.0 / SIZE
  corner = rng.integers(0, 2, (32, 1, 2)).astype(bool)
  keypoints = (keypoints + np.where(corner, 1.0 - margin - high, margin - low)).astype(np.float32)
  images = _paint(keypoints, SIZE)
  out_images, out_points = _augment(images, keypoints, seed=4, flip=0.5, rotation=60.0,
                                    scale=0.6, translate=0.4)
  out_points = out_points.numpy()
  assert out_points.min() >= 0.0 and out_points.max() <= 1.0
  _, errors = _slot_colours(out_images, out_points)
  assert np.median(errors) < 0.25
  moved = np.abs(out_points - keypoints).max(axis=(1, 2)) * SIZE
  assert (moved > 2.0).mean() > 0.5  # shrunk, not cancelled


def _grey_images(batch, rng):
  return rng.integers(60, 190, (batch, 16, 16, 3)).astype(np.uint8)


def test_brightness_adds_one_bounded_delta_per_example():
  images = _grey_images(16, np.random.default_rng(7))
  keypoints = np.full((16, 5, 2), 0.5, np.float32)
  out_images, out_points = _augment(images, keypoints, brightness=0.2)
  delta = out_images.numpy() - images
  per_example = delta.reshape(16, -1)
  np.testing.assert_allclose(per_example, per_example[:, :1] + 0 * per_example, atol=1e-4)
  assert np.abs(per_example).max() <= 0.2 * 255 + 1e-3
  assert np.std(per_example[:, 0]) > 5
  np.testing.assert_array_equal(out_points, keypoints)


def test_contrast_scales_each_channels_distance_from_its_mean():
  images = _grey_images(16, np.random.default_rng(8))
  out_images, _ = _augment(images, np.zeros((16, 5, 2), np.float32), contrast=0.3)
  mean = images.mean(axis=(1, 2), keepdims=True)
  factor = (out_images.numpy() - mean) / (images - mean + 1e-9)
  usable = np.abs(images - mean) > 5
  for b in range(16):
    f = factor[b][usable[b]]
    np.testing.assert_allclose(f, np.median(f), atol=1e-3)
    assert 0.7 - 1e-4 <= np.median(f) <= 1.3 + 1e-4


def test_occlusion_erases_one_grey_rectangle_and_keeps_keypoints():
  images = np.random.default_rng(9).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
  keypoints = np.random.default_rng(9).uniform(0, 1, (16, 5, 2)).astype(np.float32)
  out_images, out_points = _augment(images, keypoints, occlusion=1.0, occlusion_size=0.4)
  np.testing.assert_array_equal(out_points, keypoints)
  for before, after in zip(images, out_images.numpy()):
    changed = np.any(after != before, axis=-1)
    rows, cols = np.nonzero(changed)
    assert len(rows)
    box = after[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert np.all(box == box[0, 0, 0])  # one rectangle, one grey level
    assert rows.max() - rows.min() + 1 <= 0.4 * 32 + 1
    assert cols.max() - cols.min() + 1 <= 0.4 * 32 + 1
  unchanged, _ = _augment(images, keypoints, occlusion=0.0, occlusion_size=0.4)
  np.testing.assert_array_equal(unchanged, images.astype(np.float32))


def test_a_seed_repeats_and_another_seed_differs():
  images, keypoints = _faces(8, np.random.default_rng(10))
  fields = dict(flip=0.5, brightness=0.2, contrast=0.2, rotation=10.0, scale=0.1,
                translate=0.05, occlusion=0.5, occlusion_size=0.3)
  first = _augment(images, keypoints, seed=5, **fields)
  again = _augment(images, keypoints, seed=5, **fields)
  other = _augment(images, keypoints, seed=6, **fields)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.allclose(first[1], other[1])


def test_uint8_and_float_images_give_the_same_result():
  images, keypoints = _faces(4, np.random.default_rng(11))
  fields = dict(flip=0.5, rotation=10.0, brightness=0.1)
  from_uint8 = _augment(images, keypoints, **fields)
  from_float = _augment(images.astype(np.float32), keypoints, **fields)
  np.testing.assert_allclose(from_uint8[0], from_float[0], atol=1e-3)
  np.testing.assert_array_equal(from_uint8[1], from_float[1])


ALL_ON = dict(flip=0.5, brightness=0.2, contrast=0.2, rotation=10.0, scale=0.1,
              translate=0.05, occlusion=0.5, occlusion_size=0.3)


@pytest.mark.parametrize("fields", [
    dict(flip=0.5), dict(brightness=0.2), dict(contrast=0.2), dict(rotation=15.0),
    dict(scale=0.15), dict(translate=0.1), dict(occlusion=0.7, occlusion_size=0.4), ALL_ON,
], ids=["flip", "brightness", "contrast", "rotation", "scale", "translate", "occlusion", "all"])
def test_eager_graph_xla_and_tf_data_agree(fields):
  images, keypoints = _faces(6, np.random.default_rng(12), size=32)
  config = augment.make_config(**fields)
  seed = tf.constant([3, 4])
  run = lambda i, p, s: augment.augment_batch(i, p, config, s, PERM)
  eager = run(tf.constant(images), tf.constant(keypoints), seed)
  graph = tf.function(run)(images, keypoints, seed)
  xla = tf.function(run, jit_compile=True)(images, keypoints, seed)
  data = next(iter(tf.data.Dataset.from_tensors((images, keypoints, seed)).map(run)))
  for other in (graph, xla, data):
    np.testing.assert_allclose(other[0], eager[0], atol=0.02)
    np.testing.assert_allclose(other[1], eager[1], atol=1e-5)


def test_bad_configs_name_the_field():
  images, keypoints = _faces(1, np.random.default_rng(13))
  config = augment.make_config(flip=0.5)
  del config["contrast"]
  with pytest.raises(ValueError, match="contrast"):
    augment.augment_batch(images, keypoints, config, tf.constant([0, 0]), PERM)
  with pytest.raises(ValueError, match="rotation"):
    _augment(images, keypoints, rotation=400.0)
  with pytest.raises(ValueError, match="scale=1.0"):
    _augment(images, keypoints, scale=1.0)
  with pytest.raises(ValueError, match="does not match 5 keypoints"):
    augment.augment_batch(images, keypoints, augment.make_config(), tf.constant([0, 0]), (0, 1))
  with pytest.raises(ValueError, match="unknown augmentation fields"):
    augment.make_config(hue=0.1)


def _small_astronaut(astronaut, size=48):
  """A real photo, downscaled by striding (no interpolation) to size x size."""
  step = min(astronaut.shape[:2]) // size
  return np.ascontiguousarray(astronaut[::step, ::step][:size, :size])


def test_warp_fills_outside_the_frame_with_the_reflected_image(astronaut):
  """An integer shift of a real photo: the strip it uncovers is the image mirrored about its
  edge, edge pixel repeated (numpy's "symmetric" padding, OpenCV's BORDER_REFLECT)."""
  image = _small_astronaut(astronaut)
  shift = (5, -3)  # output pixel p shows input pixel p - shift
  out = augment.warp(tf.constant(image[None]), tf.eye(2)[None], tf.constant([shift], tf.float32))
  padded = np.pad(image, ((8, 8), (8, 8), (0, 0)), mode="symmetric")
  size = image.shape[0]
  rows = np.arange(size) - shift[1] + 8
  cols = np.arange(size) - shift[0] + 8
  np.testing.assert_array_equal(out[0].numpy(), padded[rows][:, cols].astype(np.float32))


def test_rotation_matches_opencv_with_border_reflect(astronaut):
  """A rotation and zoom of a real photo against cv2.warpAffine(BORDER_REFLECT), converted to
  OpenCV's pixel-centre-at-integer coordinates; with edge replication the corners differ."""
  cv2 = pytest.importorskip("cv2")
  image = _small_astronaut(astronaut)
  size = image.shape[0]
  angle, zoom = np.deg2rad(25.0), 0.8
  matrix = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  centre = np.array([size / 2, size / 2])
  offset = centre - matrix @ centre
  out = augment.warp(tf.constant(image[None]), tf.constant(matrix[None], tf.float32),
                      tf.constant(offset[None], tf.float32))[0].numpy()
  # Output index q shows input index inverse (q + 0.5 - offset) - 0.5.
  inverse = np.linalg.inv(matrix)
  to_source = np.hstack([inverse, (inverse @ (0.5 - offset) - 0.5)[:, None]])
  warp = lambda border: cv2.warpAffine(image, to_source, (size, size), flags=cv2.INTER_LINEAR |
                                       cv2.WARP_INVERSE_MAP, borderMode=border).astype(np.float32)
  reflected, replicated = warp(cv2.BORDER_REFLECT), warp(cv2.BORDER_REPLICATE)
  outside = np.abs(reflected - replicated).max(axis=-1) > 0  # where the two fills differ
  assert outside.mean() > 0.1
  assert np.abs(out - reflected)[outside].mean() < 1.0  # OpenCV's weights are 1/32 steps
  assert np.abs(out - replicated)[outside].mean() > 10.0
  assert np.abs(out - reflected).max() < 8.0


@pytest.mark.parametrize("jit", [False, True])
def test_a_batch_augmented_in_chunks_equals_the_batch_at_once(astronaut, jit):
  """A batch larger than augment.CHUNK (and not a multiple of it) is changed chunk by chunk; every
  example comes out as the same parameters applied to the whole batch at once give it."""
  rng = np.random.default_rng(3)
  photo = _small_astronaut(astronaut, 64)
  batch = augment.CHUNK + 9
  images = np.stack([np.roll(photo, (int(dy), int(dx)), axis=(0, 1))
                     for dy, dx in rng.integers(-8, 8, (batch, 2))])
  keypoints = tf.constant(rng.uniform(0.3, 0.7, (batch, 5, 2)), tf.float32)
  config = augment.make_config(flip=0.5, brightness=0.2, contrast=0.2, rotation=15.0, scale=0.1,
                               translate=0.05, occlusion=0.5, occlusion_size=0.3)
  seed = tf.constant([5, 1], tf.int64)
  chunked = tf.function(lambda: augment.augment_batch(images, keypoints, config, seed, PERM),
                        jit_compile=jit)()

  def at_once():
    params, moved = augment.draw_parameters(tf.shape(images), keypoints, config, seed, PERM)
    return augment.augment_pixels(tf.constant(images), params, config), moved

  whole, moved = tf.function(at_once, jit_compile=jit)()  # the same compiler for both
  np.testing.assert_allclose(chunked[0].numpy(), whole.numpy(), atol=1e-5)
  np.testing.assert_allclose(chunked[1].numpy(), moved.numpy(), atol=1e-6)
  assert np.abs(whole.numpy() - images).max() > 10  # it did augment
