"""Few faces without pretrained weights on a keras.applications backbone: MobileNetV2 cut at
stride 8 with the soft-argmax head and a small affine augmentation.

The recipe facekp/configs/few_faces.py replaced (its heatmaps follow faces that are moved, at a
coarser stride than the U-Net's); kept to compare a keras.applications backbone with facekp's
own on the same protocol. BatchNorm statistics are estimated once on training images and
frozen (with 11 steps an epoch, batch statistics make the trained network and the one
evaluated two different functions). Figures: docs/results.md (tools.bench_accuracy).
"""
from facekp.configs import default


def get_config():
  config = default.get_config()
  config.weights = "none"
  config.backbone = "mobilenet_v2"
  config.feature_stride = 8
  config.head = "soft_argmax"
  config.dropout = 0.5
  config.init_output_at_mean = True
  config.bn_mode = "frozen"
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.num_epochs = 60
  config.early_stopping_patience = 10
  config.precision = "float32"
  config.augment.update(flip=0.5, rotation=5.0, scale=0.05, translate=0.03)
  return config
