"""Test-time flip averaging as Keras layers: each face predicted as is and mirrored, the mirrored
points mapped back (facekp.core.keypoints.mirror) and the two averaged. Exports bake it in
(export --tta_flip) and evaluation scores it (evaluate --tta_flip) through the same model."""
import keras
import tensorflow as tf

from facekp.core import keypoints as keypoints_lib

@keras.saving.register_keras_serializable(package="facekp")
class MirrorImages(keras.layers.Layer):
  """Images [B, H, W, C] mirrored left to right."""

  def call(self, images):
    return keras.ops.flip(images, axis=2)


@keras.saving.register_keras_serializable(package="facekp")
class MirrorKeypoints(keras.layers.Layer):
  """Normalised keypoints [B, K, 2] of a mirrored image mapped back (keypoints.mirror)."""

  def __init__(self, flip_permutation, **kwargs):
    super().__init__(**kwargs)
    self.flip_permutation = [int(i) for i in flip_permutation]

  def call(self, points):
    return keypoints_lib.mirror(tf.convert_to_tensor(points), self.flip_permutation)

  def get_config(self):
    return {**super().get_config(), "flip_permutation": self.flip_permutation}


def with_flip_tta(model, flip_permutation, input_shape=None):
  """The model averaged with its mapped-back prediction on the mirrored image (test-time flip
  augmentation): twice the compute, and exactly mirror-symmetric. `input_shape` (H, W, C): for a
  model that does not record its own (a subclassed one)."""
  images = keras.Input(tuple(input_shape or model.input_shape[1:]), name="images")
  direct = model(images)
  back = MirrorKeypoints(flip_permutation, name="mirror_keypoints")(
      model(MirrorImages(name="mirror_images")(images)))
  return keras.Model(images, keras.layers.Average(name="flip_tta")([direct, back]),
                     name=f"{model.name}_flip_tta")
