"""EfficientNetV2B0 on ImageNet weights with the same augmentation as mobilenet_aug."""
from facekp.configs import default
from facekp.configs import mobilenet_aug


def get_config():
  config = default.get_config()
  config.backbone = "efficientnet_v2_b0"
  config.augment.update(mobilenet_aug.AUGMENT)
  return config
