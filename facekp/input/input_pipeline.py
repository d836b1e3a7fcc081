"""tf.data input pipeline: TFDS shards -> parse -> decode -> cache -> shuffle -> batch -> prefetch.

The dataset is found through its TFDS metadata (facekp.data.shards.builder): the split's shard files
and their example counts come from dataset_info.json, the parser from the stored feature spec.
Images are decoded here (TFDS's own decoding is skipped), in parallel, once: decoded uint8 images
are cached in memory or in cache files, and stay uint8 until they reach the device. Random
augmentation is not done here but in the train step (facekp.input.augment): a random op before
cache() would be frozen after the first epoch.
"""
import contextlib
import hashlib
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import files

AUTOTUNE = tf.data.AUTOTUNE
_REWRITE = "rewrite the dataset with tools/make_tfrecords"
_IMAGE_DECODE_ERROR = re.compile(
    r"Invalid (PNG|JPEG) data|decode|Unknown image file format|Input to reshape", re.I)
# Records parsed per tf.io.parse_example call: one call per record costs more than the parsing.
_PARSE_BATCH = 256
# Parallel image decodes: two per usable core. AUTOTUNE caps a map at one per core and on a
# 2-core machine can settle on one, halving the first epoch (docs/benchmarks.md, "The first
# epoch and the warm cache against their bounds").
DECODE_CALLS = 2 * len(os.sched_getaffinity(0))


def _split_info(data_dir, split):
  """The TFDS SplitInfo of `split`, after checking that `data_dir` is a facekp dataset."""
  builder = dataset_info.builder(data_dir)
  schema = dataset_info.load_schema(data_dir)
  features = builder.info.features
  missing = {"image", "keypoints", "image_name"} - set(features.keys())
  if missing:
    raise ValueError(f"{data_dir}/features.json: not a facekp dataset, features {sorted(missing)} "
                     "are missing")
  if features["keypoints"].shape[0] != schema.num_keypoints:
    raise ValueError(f"{data_dir}: features.json has {features['keypoints'].shape[0]} keypoints, "
                     f"{dataset_info.SCHEMA_FILE} has {schema.num_keypoints}")
  if split not in builder.info.splits:
    raise ValueError(f"{data_dir} has no split {split!r} (dataset_info.json lists "
                     f"{sorted(builder.info.splits.keys())})")
  return builder, builder.info.splits[split]


def num_examples(data_dir, split):
  """The number of examples of `split`, read from the dataset's metadata."""
  return _split_info(data_dir, split)[1].num_examples


def _pipeline_shards(split_info, input_context):
  """(path, expected number of records) of the shards this input pipeline reads, and how many
  further ways it must split their records: whole files when there are enough, else records."""
  shards = [(str(p), n) for p, n in zip(split_info.filepaths, split_info.shard_lengths)]
  if input_context is None or input_context.num_input_pipelines == 1:
    return shards, 1, 0
  num, index = input_context.num_input_pipelines, input_context.input_pipeline_id
  if len(shards) >= num:
    return shards[index::num], 1, 0
  return shards, num, index


def _check_shards_exist(shards):
  for path, _ in shards:
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: shard listed in dataset_info.json is missing")


def _check_shards_readable(shards):
  """Reads every record once (checking its CRC) and compares the count with the metadata's.

  tf.data's own error for a damaged record does not say which file holds it: this names it. It
  costs a full read, so pipelines run it only once reading has failed (naming_damaged_records).
  """
  for path, expected in shards:
    try:
      count = int(tf.data.TFRecordDataset(path).batch(1024).reduce(
          np.int64(0), lambda n, records: n + tf.size(records, out_type=tf.int64)))
    except tf.errors.OpError as e:
      raise ValueError(f"{path}: corrupt TFRecord shard ({e.message.splitlines()[0]}); "
                       f"{_REWRITE}") from None
    _check_count(path, count, expected)


def _check_count(path, count, expected):
  if count != expected:
    raise ValueError(f"{path}: holds {count} records, dataset_info.json says {expected}; "
                     f"{_REWRITE}")


def _check_shard_framing(shards):
  """Walks each shard's record headers (8-byte length, 4-byte CRC, the data, its 4-byte CRC)
  without reading the data: the record count must be the metadata's and the last record must end
  where the file ends. A shard cut short or missing records is named before any reading; a byte
  damaged inside a record is caught by its CRC when tf.data reads it (naming_damaged_records).
  """
  for path, expected in shards:
    size = tf.io.gfile.stat(path).length
    count, offset = 0, 0
    # Local shards through the builtin file: a GFile seek and read costs ~60 us a record.
    with (open if files.is_local(path) else tf.io.gfile.GFile)(path, "rb") as f:
      while offset < size:
        f.seek(offset)
        header = f.read(12)
        if len(header) < 12:
          break
        offset += 16 + int.from_bytes(header[:8], "little")
        count += 1
    if offset != size:
      raise ValueError(f"{path}: corrupt TFRecord shard (its last record runs past the file's "
                       f"end at byte {size}: cut short?); {_REWRITE}")
    _check_count(path, count, expected)


def _cache_file(cache_dir, split, image_size, shards, num_splits, index):
  """A cache file name that changes whenever the shards change, so a stale cache is never read:
  it hashes each shard's path, size, modification time and first 64 KiB."""
  fingerprint = hashlib.sha1(f"{num_splits}:{index}".encode())
  for path, _ in shards:
    stat = tf.io.gfile.stat(path)
    fingerprint.update(f";{path}:{stat.length}:{stat.mtime_nsec}:".encode())
    with tf.io.gfile.GFile(path, "rb") as f:
      fingerprint.update(f.read(1 << 16))
  tf.io.gfile.makedirs(cache_dir)
  return (f"{cache_dir}/{dataset_info.DATASET_NAME}-{split}-{image_size}px-"
          f"{fingerprint.hexdigest()[:16]}")


def decode(encoded, image_size, pixels_shape=None):
  """A stored image -> uint8 [S,S,3], resized if stored at another size (the normalised keypoints
  are unchanged by that). `encoded`: PNG or JPEG bytes, or with `pixels_shape` (a dataset written
  with make_tfrecords --image_format=pixels) the raw uint8 pixels of an image of that shape."""
  image = _decode_stored(encoded, pixels_shape)
  image = tf.cond(
      tf.reduce_all(tf.shape(image)[:2] == image_size),
      lambda: image,
      lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
          image, [image_size, image_size], antialias=True)), 0, 255), tf.uint8))
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _decode_stored(encoded, pixels_shape):
  if pixels_shape is None:
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), pixels_shape)


def pixels_shape(features):
  """The shape of the images of a dataset that stores raw pixels, or None (PNG or JPEG bytes)."""
  image = features["image"]
  return None if isinstance(image, tfds.features.Image) else tuple(image.shape)


def _parse_spec(features, names):
  """tf.io.parse_example's spec for these features, from the dataset's stored feature spec."""
  info = features.get_serialized_info()
  return {name: tf.io.FixedLenFeature(info[name].shape, info[name].tf_dtype) for name in names}


def _decoded_examples(data_dir, split, image_size, cache, input_context, with_names=False):
  """Decoded (image, keypoints[, image_name]) examples of this input pipeline, in file order,
  cached when `cache` says so."""
  builder, split_info = _split_info(data_dir, split)
  shards, num_splits, index = _pipeline_shards(split_info, input_context)
  _check_shards_exist(shards)
  cache_file = None
  if isinstance(cache, str):
    cache_file = _cache_file(cache, split, image_size, shards, num_splits, index)
  if cache_file is None or not tf.io.gfile.exists(cache_file + ".index"):
    _check_shard_framing(shards)

  names = ("image", "keypoints") + (("image_name",) if with_names else ())
  spec = _parse_spec(builder.info.features, names)
  ds = tf.data.TFRecordDataset([path for path, _ in shards])
  if num_splits > 1:
    ds = ds.shard(num_splits, index)
  stored_shape = pixels_shape(builder.info.features)

  def parse(records):
    parsed = tf.io.parse_example(records, spec)
    return tuple(parsed[name] for name in names)

  def decode_image(image, *rest):
    return (decode(image, image_size, stored_shape), *rest)

  ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=AUTOTUNE)
  ds = ds.unbatch().map(decode_image, num_parallel_calls=DECODE_CALLS)
  if cache_file is not None:
    ds = ds.cache(cache_file)
  elif cache:
    ds = ds.cache()
  return ds


@contextlib.contextmanager
def naming_damaged_records(data_dir, splits):
  """Reading inside the block that fails on a damaged shard or an image that does not decode
  raises a ValueError naming the shard (and the example), where tf.data names neither."""
  try:
    yield
  except tf.errors.DataLossError:
    for split in splits:
      _check_shards_readable(_pipeline_shards(_split_info(data_dir, split)[1], None)[0])
    raise
  except tf.errors.InvalidArgumentError as e:
    where = (_undecodable_image(data_dir, splits) if _IMAGE_DECODE_ERROR.search(e.message)
             else None)
    if where is None:
      raise
    raise ValueError(f"corrupt image in {where}; {_REWRITE}") from None


def _num_passes(repeat, train):
  """None: train repeats forever, evaluation reads once. True: forever; False: once; n: n passes."""
  if repeat is None:
    return -1 if train else 1
  if isinstance(repeat, bool):
    return -1 if repeat else 1
  if repeat < 1:
    raise ValueError(f"repeat must be None, a bool or a positive number of passes, got {repeat}")
  return int(repeat)


def create_split(data_dir, split, *, batch_size, train, image_size=128, cache=True,
                 shuffle_buffer=10_000, seed=0, input_context=None, repeat=None):
  """Batches (images uint8 [B,S,S,3], keypoints float32 [B,K,2] normalised) of one split.

  Args:
    data_dir: a facekp dataset directory (tools/make_tfrecords --out).
    split: "train", "validation" or "test".
    batch_size: the global batch size; with `input_context` each replica gets its share.
    train: True: shuffled (reproducibly from `seed`), repeated, full batches only.
      False: every example exactly once, in stored order; the last batch may be short.
    image_size: S; stored images of another size are resized (normalised keypoints unchanged).
    cache: True: decoded images cached in memory; a directory path: cached in files there (for
      sets larger than memory; the file name changes when the shards change); False: no cache.
    shuffle_buffer: shuffle buffer size in examples (train only).
    seed: seed of the shuffle order.
    input_context: a tf.distribute.InputContext: reads this input pipeline's part of the split.
    repeat: None: train repeats forever, evaluation reads once; else the number of passes
      (True: forever).
  """
  per_replica_batch = (input_context.get_per_replica_batch_size(batch_size)
                       if input_context else batch_size)
  ds = _decoded_examples(data_dir, split, image_size, cache, input_context)
  if train:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  passes = _num_passes(repeat, train)
  if passes != 1:
    ds = ds.repeat(passes)
  ds = ds.batch(per_replica_batch, drop_remainder=train, num_parallel_calls=AUTOTUNE)
  return ds.prefetch(AUTOTUNE)


def distributed_dataset(strategy, data_dir, split, *, global_batch_size, train,
                        split_across_workers=True, **kwargs):
  """create_split per input pipeline of `strategy` (one per worker); each replica gets its
  share of the batch.

  With several workers each reads its part of the split (whole shard files when there are at
  least as many shards as workers, else every n-th record), unless `split_across_workers` is
  False: then every worker reads the whole split (evaluation: every worker runs the same number
  of steps, whatever the shards, and the metrics averaged over workers are exactly the split's).
  """
  def dataset_fn(input_context):
    if not split_across_workers:
      input_context = tf.distribute.InputContext(
          num_replicas_in_sync=input_context.num_replicas_in_sync)
    return create_split(data_dir, split, batch_size=global_batch_size, train=train,
                        input_context=input_context, **kwargs)
  return strategy.distribute_datasets_from_function(dataset_fn)


def _undecodable_image(data_dir, splits):
  """Where the first stored image of these splits that does not decode lies, 'shard, record i
  (name): why', or None."""
  for split in splits:
    builder, split_info = _split_info(data_dir, split)
    decoders = {"image": tfds.decode.SkipDecoding()}
    for path in split_info.filepaths:
      for i, record in enumerate(tf.data.TFRecordDataset(str(path))):
        example = builder.info.features.deserialize_example(record, decoders=decoders)
        try:
          _decode_stored(example["image"], pixels_shape(builder.info.features))
        except tf.errors.InvalidArgumentError as e:
          name = example["image_name"].numpy().decode("utf-8", "replace")
          return f"{path}, record {i} ({name}): {e.message.splitlines()[0]}"
  return None


def load_arrays(data_dir, split, image_size=128):
  """The whole split in memory, in stored order: {"images" uint8 [N,S,S,3], "keypoints" float32
  [N,K,2] normalised, "image_names" str [N]}."""
  ds = _decoded_examples(data_dir, split, image_size, cache=False, input_context=None,
                         with_names=True)
  images, keypoints, names = [], [], []
  with naming_damaged_records(data_dir, (split,)):
    for image, points, name in ds.batch(1024).prefetch(AUTOTUNE).as_numpy_iterator():
      images.append(image)
      keypoints.append(points)
      names.extend(n.decode("utf-8") for n in name)
  num_keypoints = ds.element_spec[1].shape[0]
  return {
      "images": (np.concatenate(images) if images
                 else np.zeros((0, image_size, image_size, 3), np.uint8)),
      "keypoints": (np.concatenate(keypoints) if keypoints
                    else np.zeros((0, num_keypoints, 2), np.float32)),
      "image_names": np.array(names, dtype=str),
  }


def train_mean_keypoints(data_dir):
  """Mean normalised keypoints [K, 2] of the training split, read without decoding images."""
  builder, split_info = _split_info(data_dir, "train")
  shards = _pipeline_shards(split_info, None)[0]
  _check_shards_exist(shards)
  _check_shard_framing(shards)
  spec = _parse_spec(builder.info.features, ("keypoints",))
  ds = tf.data.TFRecordDataset([path for path, _ in shards]).batch(4096).map(
      lambda records: tf.io.parse_example(records, spec)["keypoints"])
  total, count = 0.0, 0
  with naming_damaged_records(data_dir, ("train",)):
    for batch in ds.as_numpy_iterator():
      total = total + batch.astype(np.float64).sum(axis=0)
      count += len(batch)
  if not count:
    raise ValueError(f"the train split of {data_dir} is empty: no mean shape")
  return (total / count).astype(np.float32)


def first_examples(data_dir, split, count, image_size=128):
  """(images, keypoints) NumPy arrays of the first `count` examples of a split, in stored order."""
  batch = create_split(data_dir, split, batch_size=count, train=False, image_size=image_size,
                       cache=False)
  return next(batch.take(1).as_numpy_iterator())
