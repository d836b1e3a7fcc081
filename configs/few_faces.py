"""Learning from a few hundred aligned faces without ImageNet weights (CPU, minutes).

On the 431 aligned crops of ../shared/data/aligned128 (357 train, 42 validation, 32 test; the
README's Results) the seed's recipe from scratch predicts one face for all (37.7 px test MAE);
this one learns: 0.86 px test, 1.44 px validation, against 1.33 / 1.80 px for the mean shape.
  - the backbone cut at stride 4 (32x32 map at 128 px) and read out linearly per position
    (head "flatten"): aligned faces put each point at nearly the same place, the offsets are
    local detail that global pooling averages away;
  - offsets from the training mean face in units of 2% of the image;
  - BatchNorm statistics estimated once and frozen: with 11 steps an epoch, batch statistics
    make the trained network and the one evaluated two different functions;
  - a low learning rate, patience that fits an 11-step epoch, horizontal flips only.
Tried on the same split and left out (test / validation MAE px): rotation 5, scale 0.05,
translate 0.03 (1.09 / 1.57; 1.16 / 1.60 with brightness and contrast over 80 cosine epochs):
aligned test faces sit where the read-out looks, moved faces only dilute 357 examples; the
soft-argmax head at stride 8 (1.37 / 1.81 at lr 1e-4; 1.10 / 1.58 at 1e-3, cosine, affine:
configs/few_faces_robust.py, which follows moved faces);
the flatten head at stride 8 (1.00 / 1.50); AdamW weight decay 10 (0.81 / 1.46) and 30
(1.01 / 1.53): within the noise of 32 and 42 faces, so left off.
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
