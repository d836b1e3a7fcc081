"""Model tests: backbones by name, preprocessing inside, heads, weights, save and load."""
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from facekp.configs import default
from facekp.models import keypoint_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]], np.float32)


def small_config(**overrides):
  config = default.get_config()
  config.update(image_size=32, weights="none", backbone_kwargs={"alpha": 0.35})
  config.update(overrides)
  return config


def images(n=2, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.fixture(autouse=True)
def float32_policy():
  yield
  keras.mixed_precision.set_global_policy("float32")


def test_dense_head_takes_uint8_and_starts_at_the_mean():
  model = keypoint_model.create_model(small_config(), 5, mean_keypoints=MEAN)
  x = images()
  out = model(x)
  assert out.shape == (2, 5, 2) and out.dtype == tf.float32
  np.testing.assert_allclose(model(x.astype(np.float32)), out, rtol=1e-6)
  np.testing.assert_allclose(out, np.broadcast_to(MEAN, (2, 5, 2)), rtol=1e-6)


def test_backbone_preprocessing_is_the_backbones_own():
  x = images().astype(np.float32)
  for backbone, expected in (("mobilenet_v2", x / 127.5 - 1.0), ("resnet50", None)):
    layer = keypoint_model.BackbonePreprocessing(backbone)
    if expected is None:
      expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-4)


def test_any_keras_application_by_name_and_a_clear_error_for_others():
  config = small_config(backbone="efficientnet_v2_b0")
  config.backbone_kwargs = {}
  model = keypoint_model.create_model(config, 5)
  assert model(images()).shape == (2, 5, 2)
  assert "efficientnetv2b0" in keypoint_model.backbone_names()
  with pytest.raises(ValueError, match="unknown backbone 'mobilenet_v9'.*mobilenet_v2"):
    keypoint_model.create_model(small_config(backbone="mobilenet_v9"), 5)


def test_soft_argmax_lands_on_the_peak_cell_centre():
  logits = np.full((1, 4, 8, 2), -1e4, np.float32)
  logits[0, 1, 6, 0] = 0.0  # row 1 of 4, column 6 of 8
  logits[0, :, :, 1] = 0.0  # flat: the centre of the image
  np.testing.assert_allclose(keypoint_model.SoftArgmax()(logits), [[[6.5 / 8, 1.5 / 4], [0.5, 0.5]]],
                             atol=1e-6)


def test_soft_argmax_head_on_a_stride_16_cut_under_mixed_bfloat16():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = keypoint_model.create_model(small_config(head="soft_argmax", feature_stride=16), 5)
  assert keypoint_model.backbone_of(model).output.shape[1:3] == (2, 2)
  out = model(images())
  assert out.dtype == tf.float32
  assert np.all((out.numpy() > 0) & (out.numpy() < 1))
  with pytest.raises(ValueError, match="2x2 or more, the backbone gives 1x1 at 32 px"):
    keypoint_model.create_model(small_config(head="soft_argmax"), 5)


def test_soft_argmax_prior_starts_at_the_mean_face():
  layer = keypoint_model.SoftArgmax(prior_mean=MEAN)
  np.testing.assert_allclose(layer(np.zeros((2, 8, 8, 5), np.float32)),
                             np.broadcast_to(MEAN, (2, 5, 2)), atol=0.01)
  assert len(layer.trainable_weights) == 1


def test_flatten_head_starts_at_the_mean_and_reads_positions():
  model = keypoint_model.create_model(small_config(head="flatten", feature_stride=8,
                                           output_scale=0.02), 5, mean_keypoints=MEAN)
  np.testing.assert_allclose(model(images()), np.broadcast_to(MEAN, (2, 5, 2)), atol=1e-6)
  features = keypoint_model.backbone_of(model).output.shape
  assert model.get_layer("keypoints_flat").kernel.shape == (features[1] * features[2] *
                                                           features[3], 10)


def test_frozen_batch_norm_makes_training_and_inference_agree():
  model = keypoint_model.create_model(small_config(head="flatten", feature_stride=8, dropout=0.0), 5)
  x = images(8)
  assert not np.allclose(model(x, training=True), model(x, training=False), atol=1e-4)
  keypoint_model.estimate_batch_norm_statistics(model, x)
  np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-5)
  keypoint_model.freeze_batch_norm(model)
  np.testing.assert_allclose(model(x[:2], training=True), model(x[:2], training=False),
                             atol=1e-6)


def test_bn_momentum_applies_to_every_backbone_batch_norm():
  model = keypoint_model.create_model(small_config(bn_momentum=0.9), 5)
  momenta = {layer.momentum for layer in keypoint_model.batch_norm_layers(model)}
  assert momenta == {0.9}


def test_saved_model_loads_after_importing_facekp_models(tmp_path):
  model = keypoint_model.create_model(small_config(head="soft_argmax", feature_stride=16), 5)
  path = str(tmp_path / "model.keras")
  model.save(path)
  x = images()
  np.testing.assert_allclose(keras.models.load_model(path)(x), model(x), rtol=1e-5)


def test_weights_from_a_local_file(tmp_path):
  config = small_config()
  source = keypoint_model.create_model(config, 5)
  path = str(tmp_path / "backbone.weights.h5")
  keypoint_model.backbone_of(source).save_weights(path)
  loaded = keypoint_model.create_model(small_config(weights=path), 5)
  for a, b in zip(keypoint_model.backbone_of(source).weights, keypoint_model.backbone_of(loaded).weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  with pytest.raises(FileNotFoundError, match="no such file"):
    keypoint_model.create_model(small_config(weights=str(tmp_path / "missing.h5")), 5)


def test_imagenet_weights_offline_say_what_to_do(tmp_path):
  # An empty Keras cache and an unreachable proxy: offline, whatever the machine.
  env = dict(os.environ, KERAS_HOME=str(tmp_path), https_proxy="http://127.0.0.1:9",
             HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
  code = textwrap.dedent("""
      from facekp.configs import default
      from facekp.models import keypoint_model
      config = default.get_config()
      config.image_size = 96
      keypoint_model.create_model(config, 5)
      """)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0
  assert "WeightsUnavailableError" in result.stderr
  assert "--config.weights=none" in result.stderr and "--config.weights=PATH" in result.stderr


def unet_config(**overrides):
  config = small_config(backbone="unet", head="soft_argmax", feature_stride=4)
  config.backbone_kwargs = {"width": 8, "depth": 3}
  config.update(overrides)
  return config


def test_unet_gives_a_stride_4_map_and_a_soft_argmax_head_starting_at_the_mean():
  model = keypoint_model.create_model(unet_config(heatmap_prior_sigma=0.5), 5, mean_keypoints=MEAN)
  assert keypoint_model.backbone_of(model).output.shape[1:] == (8, 8, 16)  # 32 px / 4; 2 x width
  assert model.get_layer("keypoints").prior_sigma == 0.5
  x = images()
  out = model(x)
  assert out.shape == (2, 5, 2) and out.dtype == tf.float32
  np.testing.assert_allclose(out, np.broadcast_to(MEAN, (2, 5, 2)), atol=0.01)
  # GroupNorm: training and inference compute the same function (dropout off).
  model = keypoint_model.create_model(unet_config(dropout=0.0), 5)
  np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-5)
  assert "unet" in keypoint_model.backbone_names() and not keypoint_model.batch_norm_layers(model)


def test_unet_refuses_imagenet_weights_and_loads_its_own(tmp_path):
  with pytest.raises(ValueError, match="no ImageNet weights.*--config.weights=none"):
    keypoint_model.create_model(unet_config(weights="imagenet"), 5)
  source = keypoint_model.create_model(unet_config(), 5)
  path = str(tmp_path / "unet.weights.h5")
  keypoint_model.backbone_of(source).save_weights(path)
  loaded = keypoint_model.create_model(unet_config(weights=path), 5)
  x = keras.ops.convert_to_tensor(images().astype(np.float32) / 127.5 - 1.0)
  np.testing.assert_allclose(keypoint_model.backbone_of(loaded)(x), keypoint_model.backbone_of(source)(x),
                             rtol=1e-5, atol=1e-6)


def gaussian_maps(points, height, width, sigma):
  """Gaussian maps [N, height, width, K] (peak 1) of points [N, K, 2] normalised, sigma in
  cells: what a well-trained heatmap head outputs."""
  x = (np.arange(width) + 0.5)[None, None, :, None]
  y = (np.arange(height) + 0.5)[None, :, None, None]
  px = points[:, None, None, :, 0] * width
  py = points[:, None, None, :, 1] * height
  return np.exp(-0.5 * ((x - px) ** 2 + (y - py) ** 2) / sigma ** 2).astype(np.float32)


def test_soft_argmax_decodes_a_rendered_heatmap_to_its_sub_pixel_point():
  points = np.array([[[0.4137, 0.5521], [0.3012, 0.6677]]], np.float32)  # between cell centres
  heatmaps = gaussian_maps(points, 32, 32, sigma=1.5)
  assert heatmaps.shape == (1, 32, 32, 2)
  row, col = np.unravel_index(np.argmax(heatmaps[0, :, :, 0]), (32, 32))
  assert (col, row) == (int(0.4137 * 32), int(0.5521 * 32))
  # The log of a Gaussian map is a quadratic: its softmax is that Gaussian, its mean the point.
  decoded = keypoint_model.SoftArgmax()(np.log(heatmaps + 1e-30))
  np.testing.assert_allclose(decoded, points, atol=1e-4)  # 0.004 px at 32 cells of 128 px


def test_unet_model_saves_and_loads(tmp_path):
  model = keypoint_model.create_model(unet_config(), 5, mean_keypoints=MEAN)
  path = str(tmp_path / "model.keras")
  model.save(path)
  x = images()
  np.testing.assert_allclose(keras.models.load_model(path)(x), model(x), rtol=1e-5)
