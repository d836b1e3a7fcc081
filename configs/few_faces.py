"""Learning from a few hundred aligned faces without ImageNet weights (CPU, minutes).

Measured on the 431 aligned crops of ../shared/data/aligned128 (see the table in the issue note):
the seed's recipe from scratch predicts one face for all; this one learns.
  - the backbone cut at stride 4 (32x32 map at 128 px) and read out linearly per position
    (head "flatten"): aligned faces put each point at nearly the same place, the offsets are
    local detail that global pooling averages away;
  - offsets from the training mean face in units of 2% of the image;
  - BatchNorm statistics estimated once and frozen: with 11 steps an epoch, batch statistics
    make the trained network and the one evaluated two different functions;
  - a low learning rate, patience that fits an 11-step epoch, horizontal flips only (aligned test
    faces: other geometric augmentation moves the faces away from where the read-out looks).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.weights = "none"
  config.backbone = "mobilenet_v2"
  config.feature_stride = 4
  config.head = "flatten"
  config.dropout = 0.5
  config.init_output_at_mean = True
  config.output_scale = 0.02
  config.bn_mode = "frozen"
  config.learning_rate = 1e-4
  config.num_epochs = 40
  config.early_stopping_patience = 10
  config.precision = "float32"
  config.augment.flip = 0.5
  return config
