"""Training throughput: the seed's way against facekp's, in one run.

  python -m tools.bench_train [--images=DIR] [--steps=5] [--json=FILE]

The seed's way: a keras.utils.PyDataset (Keras 3's Sequence) that loads each batch of PNGs with
OpenCV into float32 arrays, fed to model.fit, float32, one device. facekp's way: tf.data from
TFRecords (decoded once, cached uint8) into KeypointTrainer, whose train step augments on the
device (facekp/configs/mobilenet_aug.py's augmentation), for MobileNetV2 and EfficientNetV2B0 at
128x128, batch 32, float32 and mixed precision (bfloat16 on CPU, float16 on GPU), with and
without XLA, on one and two replicas (two logical devices split from the first CPU or GPU).
Prints images/s per setting and the ratio to the seed's way for the same backbone; --json writes
them. The images are ../shared/data/aligned128 when present, else synthetic noise PNGs (said so).
"""
import glob
import json
import os
import platform
import tempfile
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
from absl import logging
import numpy as np

import tools

FLAGS = flags.FLAGS
flags.DEFINE_string("images", tools.SHARED_FACES, "Folder of 128x128 PNG faces.")
flags.DEFINE_list("backbones", ["mobilenet_v2", "efficientnet_v2_b0"], "Backbones to time.")
flags.DEFINE_list("replicas", ["1", "2"], "Replica counts for facekp's way.")
flags.DEFINE_list("precisions", ["float32", "mixed"], "float32 and/or mixed.")
flags.DEFINE_list("xla", ["off", "on"], "jit_compile off and/or on.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_bool("seed", True, "Also time the seed-style fit, the baseline of the ratios.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first (tracing, compiling, caches).")
flags.DEFINE_integer("steps", 5, "Timed steps per setting.")
flags.DEFINE_integer("max_images", 256, "Images to use (the PNGs are read in the timed steps "
                     "of the seed's way; facekp caches them).")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")

IMAGE_SIZE = 128
MEAN_FACE = np.array([[0.5, 0.55], [0.35, 0.4], [0.37, 0.7], [0.65, 0.4], [0.63, 0.7]],
                     np.float32)


def _split_devices():
  """Two logical devices on the first GPU (or the CPU), before TensorFlow initialises them."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    memory = tf.config.experimental.get_device_details(gpus[0]).get("memory_limit")
    limit = int(memory / 2**20 * 0.45) if memory else 8192
    tf.config.set_logical_device_configuration(
        gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=limit)] * 2)
    return "GPU"
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  return "CPU"


def _image_paths(tmp):
  paths = sorted(glob.glob(os.path.join(FLAGS.images, "*.png")))[:FLAGS.max_images]
  if paths:
    return paths, f"{len(paths)} faces from {os.path.abspath(FLAGS.images)}"
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(max(64, FLAGS.batch_size * (FLAGS.warmup_steps + FLAGS.steps))):
    paths.append(os.path.join(tmp, f"noise_{i:03d}.png"))
    cv2.imwrite(paths[-1], rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
  return paths, f"{len(paths)} synthetic noise PNGs ({FLAGS.images} is absent)"


def _write_dataset(paths, out):
  """The same PNGs as a facekp dataset (every split), keypoints at a fixed mean face."""
  from facekp.core import dataset_info  # pylint: disable=g-import-not-at-top
  from facekp.data import shards  # pylint: disable=g-import-not-at-top
  from facekp.core import schema as schema_lib  # pylint: disable=g-import-not-at-top
  schema = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
  spec = dataset_info.features(schema.num_keypoints)
  examples = []
  for path in paths:
    with open(path, "rb") as f:
      examples.append({"image": f.read(), "image_name": os.path.basename(path),
                       "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                       "keypoints_px": MEAN_FACE * IMAGE_SIZE, "keypoints": MEAN_FACE})
  for split in ("train", "validation", "test"):
    shards.write_shard(dataset_info.shard_path(out, split, 0, 1), examples, spec)
  shards.write_metadata(out, spec, schema)
  return schema


class _StepTimer:
  """A keras callback noting the time at the end of each training step."""

  def __init__(self):
    import keras  # pylint: disable=g-import-not-at-top

    class Callback(keras.callbacks.Callback):
      def on_train_batch_end(inner, batch, logs=None):  # pylint: disable=no-self-argument
        self.times.append(time.perf_counter())
    self.times = []
    self.callback = Callback()

  def images_per_second(self, batch_size):
    timed = self.times[FLAGS.warmup_steps - 1:]
    if len(timed) < 2:
      raise ValueError(f"only {len(self.times)} steps ran, fewer than --warmup_steps + 2: give "
                       "more images (--max_images, --images) or fewer --steps")
    return (len(timed) - 1) * batch_size / (timed[-1] - timed[0])


def _config(backbone, precision, xla, strategy):
  from facekp.configs import mobilenet_aug  # pylint: disable=g-import-not-at-top
  config = mobilenet_aug.get_config()
  config.update(backbone=backbone, weights="none", image_size=IMAGE_SIZE,
                batch_size=FLAGS.batch_size, precision=precision, jit_compile=xla,
                strategy=strategy)
  return config


def seed_way(backbone, paths):
  """PyDataset of cv2-loaded PNGs -> model.fit, float32, the default strategy."""
  import cv2  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  from facekp.models import keypoint_model  # pylint: disable=g-import-not-at-top

  class Faces(keras.utils.PyDataset):
    def __len__(self):
      return len(paths) // FLAGS.batch_size

    def __getitem__(self, index):
      batch = paths[index * FLAGS.batch_size:(index + 1) * FLAGS.batch_size]
      images = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in batch])
      return images.astype(np.float32), np.broadcast_to(MEAN_FACE, (len(batch), 5, 2))

  keras.mixed_precision.set_global_policy("float32")
  model = keypoint_model.create_model(_config(backbone, "float32", False, "auto"), 5)
  model.compile(keras.optimizers.Adam(1e-3), keras.losses.Huber(), metrics=["mae"],
                jit_compile=False)
  timer = _StepTimer()
  model.fit(Faces(), epochs=1, steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps,
            callbacks=[timer.callback], verbose=0)
  return timer.images_per_second(FLAGS.batch_size)


def facekp_way(backbone, precision, xla, replicas, data_dir, schema):
  """tf.data (cached uint8) -> KeypointTrainer with augmentation in the train step."""
  import keras  # pylint: disable=g-import-not-at-top
  from facekp.input import input_pipeline  # pylint: disable=g-import-not-at-top
  from facekp.models import keypoint_model  # pylint: disable=g-import-not-at-top
  from facekp.train import hardware  # pylint: disable=g-import-not-at-top
  from facekp.train import keypoint_trainer  # pylint: disable=g-import-not-at-top

  strategy = hardware.create_strategy("mirrored" if replicas > 1 else "one_device")
  config = _config(backbone, precision, xla, "")
  keras.mixed_precision.set_global_policy(hardware.resolve_precision(precision, strategy))
  data = input_pipeline.distributed_dataset(
      strategy, data_dir, "train", global_batch_size=FLAGS.batch_size, train=True,
      image_size=IMAGE_SIZE, cache=True)
  with strategy.scope():
    trainer = keypoint_trainer.KeypointTrainer(keypoint_model.create_model(config, 5),
                                               config.augment, schema.flip_permutation, seed=0)
    trainer.compile(keras.optimizers.Adam(1e-3), keras.losses.Huber(),
                    metrics=["mae"], jit_compile=xla)
  timer = _StepTimer()
  trainer.fit(data, epochs=1, steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps,
              callbacks=[timer.callback], verbose=0)
  return timer.images_per_second(FLAGS.batch_size)


def main(argv):
  del argv
  device = _split_devices()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from facekp.train import hardware  # pylint: disable=g-import-not-at-top
  mixed = "mixed_float16" if device == "GPU" else "mixed_bfloat16"
  results = {"device": device, "machine": platform.processor() or platform.machine(),
             "cpu_count": os.cpu_count(), "tensorflow": tf.__version__,
             "batch_size": FLAGS.batch_size, "image_size": IMAGE_SIZE,
             "timed_steps": FLAGS.steps, "settings": []}
  with tempfile.TemporaryDirectory() as tmp:
    paths, source = _image_paths(tmp)
    results["images"] = source
    print(f"bench_train on {device} ({os.cpu_count()} cores): {source}; batch "
          f"{FLAGS.batch_size}, {FLAGS.steps} timed steps after {FLAGS.warmup_steps}", flush=True)
    data_dir = os.path.join(tmp, "data")
    os.makedirs(data_dir)
    schema = _write_dataset(paths, data_dir)
    for backbone in FLAGS.backbones:
      seed = float("nan")
      if FLAGS.seed:
        seed = seed_way(backbone, paths)
        results["settings"].append(dict(backbone=backbone, way="seed", precision="float32",
                                        xla=False, replicas=1, images_per_s=seed, ratio=1.0))
        print(f"{backbone:<20} seed   float32        XLA off  1 replica : {seed:8.1f} images/s",
              flush=True)
      for precision in FLAGS.precisions:
        for xla in FLAGS.xla:
          for replicas in (int(r) for r in FLAGS.replicas):
            name = "float32" if precision == "float32" else mixed
            error = hardware.jit_compile_problem(xla == "on", replicas)
            speed = float("nan")
            if not error:
              try:
                speed = facekp_way(backbone, name, xla == "on", replicas, data_dir, schema)
              except Exception as e:  # a setting that fails is reported, the others still run
                logging.exception("%s %s XLA %s %d replicas failed", backbone, name, xla,
                                  replicas)
                error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            results["settings"].append(dict(
                backbone=backbone, way="facekp", precision=name, xla=xla == "on",
                replicas=replicas, images_per_s=speed, ratio=speed / seed, error=error))
            print(f"{backbone:<20} facekp {name:<14} XLA {xla:<3}  {replicas} replica"
                  f"{'s' if replicas > 1 else ' '}: {speed:8.1f} images/s"
                  + (f"  x{speed / seed:5.2f}" if FLAGS.seed else "")
                  + (f"  FAILED {error}" if error else ""), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
  cli.run(main)
