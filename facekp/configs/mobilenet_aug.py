"""MobileNetV2 on ImageNet weights with keypoint-true augmentation on the device."""
from facekp.configs import default


def get_config():
  config = default.get_config()
  config.backbone = "mobilenet_v2"
  config.augment.update(AUGMENT)
  return config


AUGMENT = dict(flip=0.5, brightness=0.2, contrast=0.2, rotation=10.0, scale=0.1, translate=0.05,
               occlusion=0.2, occlusion_size=0.3)
