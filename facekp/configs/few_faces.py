"""Learning five points from a few hundred faces without pretrained weights (CPU, minutes).

A small U-Net trained from scratch (facekp.models.keypoint_model.unet: GroupNorm, which
computes the same function in training and inference however few the steps) gives a 32x32 map
per point at stride 4; the soft-argmax head reads each point as the expected position of its map
(sub-pixel, and it moves with the face, unlike a read-out at fixed places), starting from a
prior around the training mean face. Strong augmentation on every step (flip, the rotation,
zoom and shift of evaluate's perturbed protocol, photometric jitter, occlusion) stands in for
the faces there are not; MAE loss; a cosine schedule over a fixed 150 epochs (no early
stopping: the best validation checkpoint is kept). Figures: docs/results.md
(`python -m tools.bench_accuracy --recipes=few_faces`).
"""
from facekp.configs import default


def get_config():
  config = default.get_config()
  config.weights = "none"
  config.backbone = "unet"
  config.backbone_kwargs = {"width": 16}
  config.feature_stride = 4
  config.head = "soft_argmax"
  config.heatmap_prior_sigma = 3.0  # cells of the 32x32 map: a wide start around the mean
  config.dropout = 0.1
  config.init_output_at_mean = True
  config.loss = "mae"
  config.learning_rate = 2e-3
  config.lr_schedule = "cosine"
  config.warmup_epochs = 1.0
  config.num_epochs = 150  # 60 and 90 closed less of the gap on each of 3 folds (docs/results.md)
  config.early_stopping_patience = 0
  config.precision = "float32"
  config.augment.update(flip=0.5, rotation=20.0, scale=0.15, translate=0.06, brightness=0.2,
                        contrast=0.3, occlusion=0.3, occlusion_size=0.3)
  return config
