"""Input pipeline benchmark: the seed's Keras PyDataset against facekp's tf.data pipeline.

  python -m tools.bench_pipeline [--epoch_size=20000] [--batch_size=32] [--json=FILE]

Feeds the same real face crops (../shared/data/aligned128, repeated to --epoch_size) three ways,
in one run, on this machine's cores:
  (a) the seed's design: a keras.utils.PyDataset that reads PNGs with OpenCV and flips and
      brightens them in NumPy, batch by batch;
  (b) facekp.input.input_pipeline.create_split(train=True) from a cold start (the shards' record
      framing checked, records parsed, PNGs decoded, cache filled): the first epoch; (b') the
      same on a dataset of stored pixels (make_tfrecords --image_format=pixels: nothing to decode);
  (c) the same pipeline from its warm in-memory cache: every later epoch.
Two bounds are measured in the same run, so that (b) and (c) read as shares of what the machine
allows: TensorFlow's PNG decoder alone on the same bytes (tf.io.decode_png in a tf.data map,
input_pipeline.DECODE_CALLS at once), and the memory copy every warm batch makes (NumPy gathering
shuffled decoded images into batches).
(b) and (c) deliver uint8 batches ready for the device: augmentation runs there, in the train step
(facekp.input.augment), so its cost on this CPU is printed apart, per batch, and (d) is the warm
pipeline followed by the seed's two augmentations (flip, brightness) on this CPU, for a
like-for-like comparison with (a) on a machine without an accelerator.
"""
import glob
import json
import os
import shutil
import tempfile
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
import cv2
import keras
import numpy as np
import tensorflow as tf

from facekp.configs import mobilenet_aug
from facekp.core import dataset_info
from facekp.core import schema as schema_lib
from facekp.data import shards as dataset_lib
from facekp.input import augment
from facekp.input import input_pipeline
import tools

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("images", tools.SHARED_FACES, "Folder of 128x128 face crops (PNG).")
flags.DEFINE_string("labels", None,
                    "A facekp dataset of those crops (tools/make_tfrecords): its keypoints label "
                    "the benchmark's examples. Absent: a constant placeholder shape.")
flags.DEFINE_integer("epoch_size", 20_000, "Images per epoch (the crops repeated).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("image_size", 128, "Image side.")
cli.define_workdir("Where to write the benchmark dataset (default: a temporary folder, removed "
                   "afterwards).", required=False)
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")

_PLACEHOLDER = np.array([[0.5, 0.62], [0.33, 0.47], [0.38, 0.75], [0.67, 0.47], [0.62, 0.75]],
                        np.float32)  # only when no labels exist: the timing does not depend on it


def _source_faces(workdir):
  """(PNG paths, their PNG bytes, keypoints [N,K,2], schema, a sentence on what they are)."""
  paths = sorted(glob.glob(os.path.join(FLAGS.images, "*.png")))
  if not paths:
    return _sample_faces(os.path.join(workdir, "faces"))
  blobs = [open(p, "rb").read() for p in paths]
  if FLAGS.labels and tf.io.gfile.exists(f"{FLAGS.labels}/dataset_info.json"):
    labels = {}
    for split in dataset_lib.SPLITS:
      arrays = input_pipeline.load_arrays(FLAGS.labels, split, image_size=FLAGS.image_size)
      labels.update(zip((os.path.basename(n) for n in arrays["image_names"]),
                        arrays["keypoints"]))
    kept = [i for i, p in enumerate(paths) if os.path.basename(p) in labels]
    keypoints = np.stack([labels[os.path.basename(paths[i])] for i in kept])
    return ([paths[i] for i in kept], [blobs[i] for i in kept], keypoints,
            dataset_info.load_schema(FLAGS.labels),
            f"{len(kept)} real crops from {FLAGS.images}, MediaPipe keypoints from {FLAGS.labels}")
  print(f"[bench] no labelled dataset (--labels={FLAGS.labels}): placeholder keypoints")
  return (paths, blobs, np.tile(_PLACEHOLDER, (len(paths), 1, 1)), _derived_schema(),
          f"{len(paths)} real crops from {FLAGS.images}, placeholder keypoints")


def _sample_faces(folder):
  """The committed sample photos, centre-cropped and resized, written as PNGs into `folder`."""
  print(f"[bench] {FLAGS.images} holds no PNGs (../shared/data absent?): using facekp/sample")
  os.makedirs(folder, exist_ok=True)
  paths, blobs = [], []
  for jpeg in sorted(glob.glob(os.path.join(_ROOT, "facekp", "sample", "*.jpg"))):
    image = cv2.imread(jpeg)
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    crop = cv2.resize(image[top:top + side, left:left + side], (FLAGS.image_size,) * 2,
                      interpolation=cv2.INTER_AREA)
    paths.append(os.path.join(folder, os.path.basename(jpeg)[:-4] + ".png"))
    cv2.imwrite(paths[-1], crop)
    blobs.append(open(paths[-1], "rb").read())
  return (paths, blobs, np.tile(_PLACEHOLDER, (len(paths), 1, 1)), _derived_schema(),
          f"{len(paths)} sample photos (facekp/sample) centre-cropped, placeholder keypoints")


def _derived_schema():
  from facekp.data import mirror  # MediaPipe, only when no labelled dataset gives the schema
  return mirror.make_schema(schema_lib.DEFAULT_MESH_INDICES)


def _write_dataset(out, blobs, keypoints, schema, num_shards=16, pixels=False):
  """The crops repeated to epoch_size, as a facekp train split: PNG bytes, or with `pixels` their
  decoded pixels (make_tfrecords --image_format=pixels). Returns the shards' bytes."""
  size = FLAGS.image_size
  spec = dataset_info.features(schema.num_keypoints, size if pixels else 0)
  if pixels:
    blobs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB) for b in blobs]
  order = np.arange(FLAGS.epoch_size) % len(blobs)
  total = 0
  for shard, part in enumerate(np.array_split(order, num_shards)):
    total += dataset_lib.write_shard(
        dataset_info.shard_path(out, "train", shard, num_shards),
        ({"image": blobs[i], "image_name": f"{i}.png", "height": size, "width": size,
          "keypoints_px": keypoints[i] * size, "keypoints": keypoints[i]} for i in part), spec)[1]
  dataset_lib.write_metadata(out, spec, schema)
  return total


class SeedSequence(keras.utils.PyDataset):
  """The seed's loader: OpenCV reads each batch's PNGs, NumPy flips and brightens them."""

  def __init__(self, paths, keypoints, batch_size, flip_permutation, **kwargs):
    super().__init__(**kwargs)
    self.paths, self.keypoints, self.batch_size = paths, keypoints, batch_size
    self.flip_permutation = list(flip_permutation)
    self.rng = np.random.default_rng(0)

  def __len__(self):
    return len(self.paths) // self.batch_size

  def __getitem__(self, index):
    batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
    images = np.stack([cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB)
                       for p in self.paths[batch]]).astype(np.float32)
    keypoints = self.keypoints[batch].copy()
    flip = self.rng.random(len(images)) < 0.5
    images[flip] = images[flip, :, ::-1]
    flipped = keypoints[flip][:, self.flip_permutation]
    flipped[..., 0] = 1.0 - flipped[..., 0]
    keypoints[flip] = flipped
    delta = self.rng.uniform(-0.2, 0.2, (len(images), 1, 1, 1)) * 255.0
    return np.clip(images + delta, 0.0, 255.0), keypoints


def _sequence_rate(paths, keypoints, flip_permutation):
  sequence = SeedSequence(paths, keypoints, FLAGS.batch_size, flip_permutation)
  start = time.perf_counter()
  for index in range(len(sequence)):
    sequence[index]
  return len(sequence) * FLAGS.batch_size / (time.perf_counter() - start)


def _drain(iterator, steps, augment_fn=None):
  """Pulls `steps` batches inside one tf.function, as a train loop does; returns seconds."""

  @tf.function
  def pull():
    total = tf.constant(0.0)
    for step in tf.range(steps):
      images, keypoints = next(iterator)
      if augment_fn is not None:
        images, keypoints = augment_fn(images, keypoints, step)
      total += tf.reduce_mean(tf.cast(images[:, ::16, ::16], tf.float32))
    return total

  start = time.perf_counter()
  pull().numpy()
  return time.perf_counter() - start


def _augment_cost(flip_permutation):
  """ms per batch of augment.augment_batch with the training config, on this CPU, as the train
  step runs it: in chunks in graph mode, the whole batch at once under XLA."""
  config = augment.make_config(**mobilenet_aug.AUGMENT)
  costs = {}
  for batch in (32, 256):
    images = tf.constant(np.random.default_rng(0).integers(
        0, 256, (batch, FLAGS.image_size, FLAGS.image_size, 3), np.uint8))
    keypoints = tf.constant(np.tile(_PLACEHOLDER, (batch, 1, 1)))
    for mode, jit in (("graph", False), ("xla", True)):
      chunk_size = 0 if jit else augment.CHUNK
      run = tf.function(lambda s: augment.augment_batch(  # pylint: disable=cell-var-from-loop
          images, keypoints, config, s, flip_permutation, chunk_size), jit_compile=jit)
      run(tf.constant([0, 0]))[0].numpy()
      seconds = []
      for step in range(20 if batch == 32 else 8):  # the median: calls stalled by others drop out
        start = time.perf_counter()
        run(tf.constant([0, step + 1]))[0].numpy()
        seconds.append(time.perf_counter() - start)
      costs[f"{batch}_{mode}"] = float(np.median(seconds)) * 1000
      print(f"[bench] augment_batch, batch {batch:3d}, {mode:5s}: "
            f"{costs[f'{batch}_{mode}']:7.1f} ms/batch "
            f"({batch / costs[f'{batch}_{mode}'] * 1000:7.0f} images/s)", flush=True)
  return costs


def _decode_bound(blobs):
  """Images/s of tf.io.decode_png alone over the epoch's PNG bytes, held in memory."""
  encoded = [blobs[i % len(blobs)] for i in range(FLAGS.epoch_size)]
  ds = tf.data.Dataset.from_tensor_slices(encoded).map(
      lambda data: tf.io.decode_png(data, channels=3),
      num_parallel_calls=input_pipeline.DECODE_CALLS).batch(FLAGS.batch_size)
  start = time.perf_counter()
  for _ in ds:
    pass
  return FLAGS.epoch_size / (time.perf_counter() - start)


def _copy_bound(blobs):
  """Images/s of gathering shuffled decoded images into batches with NumPy: the copy a warm
  batch cannot avoid, at this machine's memory bandwidth."""
  decoded = np.stack([cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
                      for blob in blobs])
  images = decoded[np.arange(FLAGS.epoch_size) % len(blobs)]
  order = np.random.default_rng(0).permutation(FLAGS.epoch_size)
  batch = np.empty((FLAGS.batch_size,) + images.shape[1:], np.uint8)
  steps = FLAGS.epoch_size // FLAGS.batch_size
  start = time.perf_counter()
  for step in range(steps):
    np.take(images, order[step * FLAGS.batch_size:(step + 1) * FLAGS.batch_size], axis=0,
            out=batch)
  return steps * FLAGS.batch_size / (time.perf_counter() - start)


def _cold_epoch(data_dir, steps):
  """(seconds of create_split and its first epoch, the iterator, warm for the next epochs)."""
  start = time.perf_counter()
  ds = input_pipeline.create_split(data_dir, "train", batch_size=FLAGS.batch_size, train=True,
                                   image_size=FLAGS.image_size, cache=True)
  iterator = iter(ds)
  return time.perf_counter() - start + _drain(iterator, steps), iterator


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="facekp_bench_")
  try:
    results = _run(workdir)
  finally:
    if not FLAGS.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  if FLAGS.json:
    with tf.io.gfile.GFile(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)
    print(f"[bench] wrote {FLAGS.json}")


def _run(workdir):
  paths, blobs, keypoints, schema, source = _source_faces(workdir)
  data_dir = os.path.join(workdir, "dataset")
  perm = schema.flip_permutation
  print(f"[bench] faces: {source}; epoch {FLAGS.epoch_size} images, batch {FLAGS.batch_size}, "
        f"{os.cpu_count()} CPU cores", flush=True)
  print(f"[bench] writing the dataset to {data_dir}", flush=True)
  pixels_dir = os.path.join(workdir, "dataset_pixels")
  os.makedirs(data_dir, exist_ok=True)
  os.makedirs(pixels_dir, exist_ok=True)
  png_bytes = _write_dataset(data_dir, blobs, keypoints, schema)
  pixels_bytes = _write_dataset(pixels_dir, blobs, keypoints, schema, pixels=True)
  repeated = [paths[i % len(paths)] for i in range(FLAGS.epoch_size)]

  print("[bench] (a) seed-style PyDataset: OpenCV + NumPy flip/brightness, one epoch", flush=True)
  sequence = _sequence_rate(repeated, np.stack([keypoints[i % len(paths)]
                                                for i in range(FLAGS.epoch_size)]), perm)
  steps = FLAGS.epoch_size // FLAGS.batch_size
  print("[bench] (b') tf.data, cold, stored pixels (--image_format=pixels): create_split + first "
        "epoch", flush=True)
  cold_pixels_seconds = _cold_epoch(pixels_dir, steps)[0]
  print("[bench] (b) tf.data, cold: create_split + first epoch", flush=True)
  cold_seconds, iterator = _cold_epoch(data_dir, steps)
  print("[bench] (c) tf.data, warm cache: two epochs", flush=True)
  warm_seconds = _drain(iterator, 2 * steps) / 2
  print("[bench] bounds: tf.io.decode_png alone; the warm batch's memory copy in NumPy",
        flush=True)
  decode_bound, copy_bound = _decode_bound(blobs), _copy_bound(blobs)
  print("[bench] (d) warm cache + flip/brightness (augment_batch) on this CPU: one epoch",
        flush=True)
  seed_config = augment.make_config(flip=0.5, brightness=0.2)
  augment_fn = lambda images, points, step: augment.augment_batch(
      images, points, seed_config, tf.stack([0, step]), perm)
  warm_augmented_seconds = _drain(iterator, steps, augment_fn)
  print("[bench] accelerator-side augmentation (facekp/configs/mobilenet_aug.py) timed on this "
        "CPU:", flush=True)
  costs = _augment_cost(perm)

  images = steps * FLAGS.batch_size
  results = {
      "source": source,
      "epoch_size": FLAGS.epoch_size,
      "batch_size": FLAGS.batch_size,
      "cpu_count": os.cpu_count(),
      "sequence_images_per_s": sequence,
      "cold_images_per_s": images / cold_seconds,
      "cold_pixels_images_per_s": images / cold_pixels_seconds,
      "shard_bytes_per_image_png": png_bytes / FLAGS.epoch_size,
      "shard_bytes_per_image_pixels": pixels_bytes / FLAGS.epoch_size,
      "warm_images_per_s": images / warm_seconds,
      "warm_cpu_flip_brightness_images_per_s": images / warm_augmented_seconds,
      "decode_bound_images_per_s": decode_bound,
      "copy_bound_images_per_s": copy_bound,
  }
  results["cold_vs_sequence"] = results["cold_images_per_s"] / sequence
  results["cold_pixels_vs_sequence"] = results["cold_pixels_images_per_s"] / sequence
  results["warm_vs_sequence"] = results["warm_images_per_s"] / sequence
  results["cold_vs_decode_bound"] = results["cold_images_per_s"] / decode_bound
  results["warm_vs_copy_bound"] = results["warm_images_per_s"] / copy_bound
  results["warm_cpu_flip_brightness_vs_sequence"] = (
      results["warm_cpu_flip_brightness_images_per_s"] / sequence)
  results["augment_ms_per_batch"] = costs
  for mode in ("graph", "xla"):  # per-image cost at batch 256 against batch 32's
    results[f"augment_per_image_256_vs_32_{mode}"] = round(
        costs[f"256_{mode}"] / 256 / (costs[f"32_{mode}"] / 32), 3)
  print()
  print(f"(a) seed-style PyDataset          {sequence:10,.0f} images/s")
  print(f"(b) tf.data cold (first epoch)    {results['cold_images_per_s']:10,.0f} images/s"
        f"   b/a = {results['cold_vs_sequence']:6.1f}x   "
        f"({results['cold_vs_decode_bound']:.2f} of decode_png alone: {decode_bound:,.0f})")
  print(f"(b') cold, stored pixels         {results['cold_pixels_images_per_s']:10,.0f} images/s"
        f"  b'/a = {results['cold_pixels_vs_sequence']:6.1f}x   (shards: "
        f"{results['shard_bytes_per_image_pixels'] / 1024:.1f} KiB an image, PNG "
        f"{results['shard_bytes_per_image_png'] / 1024:.1f} KiB)")
  print(f"(c) tf.data warm cache            {results['warm_images_per_s']:10,.0f} images/s"
        f"   c/a = {results['warm_vs_sequence']:6.1f}x   (target: >= 100,000 images/s; "
        f"{results['warm_vs_copy_bound']:.2f} of the batch copy alone: {copy_bound:,.0f})")
  cpu_augmented = results["warm_cpu_flip_brightness_images_per_s"]
  print(f"(d) warm + flip/brightness on CPU {cpu_augmented:10,.0f} images/s"
        f"   d/a = {results['warm_cpu_flip_brightness_vs_sequence']:6.1f}x")
  return results


if __name__ == "__main__":
  cli.run(main)
