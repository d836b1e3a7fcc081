"""Base config: the seed's recipe (MobileNetV2 on ImageNet weights, 128x128, batch 32, Adam 1e-3,
Huber loss, early stopping with patience 2). Experiment files import it and override a few fields.

Run: python -m facekp.main --config=default --workdir=runs/x --config.data_dir=DIR
"""
import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()

  # Data: a directory written by tools/make_tfrecords.
  config.data_dir = ""
  config.image_size = 128
  config.cache = "memory"  # "memory", "none", or a file path for tf.data's cache
  config.shuffle_buffer = 10_000

  # Model (facekp.models.keypoint_model).
  config.backbone = "mobilenet_v2"  # a keras.applications name (efficientnet_v2_b0...) or "unet"
  config.backbone_kwargs = ml_collections.ConfigDict()  # e.g. {"alpha": 0.35} for MobileNets
  config.weights = "imagenet"  # "imagenet", "none", or a no-top weights file
  config.feature_stride = 32  # 16 or 8 cut the backbone at its last layer at that stride
  config.head = "dense"  # "dense" (GAP -> Dense -> Dropout -> Dense), "flatten", "soft_argmax"
  config.head_units = 128
  config.dropout = 0.3
  config.init_output_at_mean = False  # start at the training mean face (offsets / a prior)
  config.output_scale = 1.0  # dense, flatten: offsets in this unit of the image size (e.g. 0.02)
  config.heatmap_prior_sigma = 1.0  # soft_argmax: width (in cells) of the start around the mean
  config.bn_momentum = config_dict.placeholder(float)  # None keeps the backbone's own
  # "batch": BatchNorm on batch statistics in training (keras' default); "frozen": statistics
  # estimated once on training images, then fixed, so training and inference agree (few images)
  config.bn_mode = "batch"
  config.sync_batch_norm = False  # batch statistics over all replicas

  # Optimisation (facekp.train.loop).
  config.batch_size = 32  # global, split over the replicas
  config.num_epochs = 50
  config.steps_per_epoch = config_dict.placeholder(int)  # None: one pass over the train split
  config.optimizer = "adam"  # "adam", "adamw" or "sgd" (momentum 0.9)
  config.learning_rate = 1e-3
  config.weight_decay = 0.0  # adamw only
  config.lr_scaling = "none"  # "linear": learning_rate * batch_size / lr_base_batch_size
  config.lr_base_batch_size = 32
  config.lr_schedule = "constant"  # or "cosine" (decays to 0 over num_epochs)
  config.warmup_epochs = 0.0  # linear warm-up from 0 to the learning rate
  config.freeze_backbone_epochs = 0  # train the head alone first, then fine-tune everything
  config.loss = "huber"  # "huber", "mse" or "mae"
  config.huber_delta = 1.0
  # Decay of an exponential moving average of the weights (e.g. 0.99; 0 turns it off):
  # validation, the best checkpoint, the pictures and the saved model use the average.
  config.ema_decay = 0.0
  # Model selection: the best checkpoint and early stopping follow this validation metric
  # (lower is better): "val_mae_px" (the reported MAE in pixels) or "val_loss".
  config.monitor = "val_mae_px"
  config.early_stopping_patience = 2  # epochs without a better `monitor`; 0 turns it off
  config.seed = 0

  # Augmentation on the accelerator (facekp.input.augment); 0 turns each one off.
  config.augment = ml_collections.ConfigDict({
      "flip": 0.0,  # probability of a horizontal flip (left/right slots swapped)
      "brightness": 0.0,  # max |delta| as a fraction of 255
      "contrast": 0.0,  # factor in [1 - c, 1 + c]
      "rotation": 0.0,  # max degrees
      "scale": 0.0,  # zoom factor in [1 - s, 1 + s]
      "translate": 0.0,  # max shift as a fraction of the image size
      "occlusion": 0.0,  # probability of erasing one rectangle
      "occlusion_size": 0.0,  # its max side as a fraction of the image size
  })

  # Hardware.
  config.strategy = "auto"  # "auto", "one_device", "mirrored", "multi_worker" or "tpu"
  config.tpu = ""  # TPU name or address for strategy=tpu ("" = local)
  config.precision = "auto"  # "auto", "float32", "mixed_float16" or "mixed_bfloat16"
  config.jit_compile = False
  # strategy multi_worker: seconds to wait for every worker named in TF_CONFIG to join (a
  # worker that cannot reach its peers then stops with a message) and for each collective op
  config.multi_worker_timeout_s = 300

  # Bookkeeping.
  config.checkpoint_every_steps = 200  # mid-epoch backup (a rerun resumes at its step)
  # progress within an epoch: 0 = a live line on a terminal, a line a minute in a log file;
  # N = a line every N steps
  config.log_every_steps = 0
  config.evaluate_at_end = True  # facekp.main runs facekp.eval.evaluate on the test split
  return config
