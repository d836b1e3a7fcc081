"""A few quick epochs on the CPU from scratch: tests, CI and the README's main job (run.sh).

Small image and batch, a slim MobileNetV2 without ImageNet weights, float32 (bfloat16 is slower
than float32 on most CPUs), so a handful of faces trains and evaluates in well under a minute.
"""
from facekp.configs import default


def get_config():
  config = default.get_config()
  config.image_size = 64
  config.backbone = "mobilenet_v2"
  config.backbone_kwargs = {"alpha": 0.35}
  config.weights = "none"
  config.batch_size = 4
  config.num_epochs = 3
  config.steps_per_epoch = 4
  config.init_output_at_mean = True
  config.precision = "float32"
  config.checkpoint_every_steps = 2
  return config
