"""The seed's first experiment: MobileNetV2 on ImageNet weights, no augmentation."""
from facekp.configs import default


def get_config():
  config = default.get_config()
  config.backbone = "mobilenet_v2"
  return config
