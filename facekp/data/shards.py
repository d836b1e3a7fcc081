"""Shard writing: cleaned rows and their images -> TFRecord shards and TFDS metadata.

The folder's layout and its readers are facekp.core.dataset_info's.
"""
import contextlib
import io
import math
import os

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import images
from facekp.core import keypoints as keypoints_lib
from facekp.data import dedup
from facekp.data import png

SHARD_TARGET_BYTES = 64 << 20
_JPEG_MAGIC = b"\xff\xd8\xff"


def write_shard(path, examples, feature_spec, serialize=None):
  """Writes serialised examples to `path` through a temporary name: a shard that exists is whole.

  Each example is a dict with the keys of
  `dataset_info.features()`; "image" holds encoded bytes. Returns
  (examples written, their serialised bytes): what TFDS records of a shard. `serialize`: what
  turns an example into its record, by default feature_spec.serialize_example.
  """
  serialize = serialize or feature_spec.serialize_example
  count = num_bytes = 0
  with files.atomic_path(path) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      for example in examples:
        record = serialize(example)
        writer.write(record)
        count, num_bytes = count + 1, num_bytes + len(record)
  return count, num_bytes


# The order in which protobuf writes the features of make_example's dicts (its map order, fixed
# for these names); RowSerializer checks it against TFDS on every shard.
_WIRE_ORDER = ("width", "keypoints_px", "keypoints", "image", "image_name", "height")


def _varint(value):
  if 0 <= value < 0x80:
    return _SMALL_VARINTS[value]
  value &= (1 << 64) - 1  # an int64 as protobuf writes it
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]
# A map entry's key (field 1) and its value's tag (field 2), of each feature.
_ENTRY_HEADS = {name: b"\n" + _varint(len(name)) + name.encode() + b"\x12" for name in _WIRE_ORDER}


def _feature(value):
  """(head, data) of a tf.train.Feature (head + data): bytes (or a uint8 array's bytes) ->
  BytesList (field 1), a float32 array -> FloatList (2, packed), an int -> Int64List (3, packed)."""
  if isinstance(value, np.ndarray) and value.dtype == np.uint8:  # stored pixels: their bytes
    value = value.tobytes()
  if isinstance(value, bytes):
    kind, data = b"\n", value
  elif isinstance(value, np.ndarray):
    kind, data = b"\x12", value.astype("<f4").tobytes()
  else:
    kind, data = b"\x1a", _varint(int(value))
  inner = b"\n" + _varint(len(data))  # the list's field 1, then the data
  return kind + _varint(len(inner) + len(data)) + inner, data


def encode_example(example):
  """The serialised tf.train.Example of a make_example dict, written directly: the bytes
  dataset_info.features().serialize_example gives (RowSerializer checks), without TFDS's checks
  and conversions of every feature or a protobuf message, and with the image copied once (most
  of the cost of writing a stored image otherwise)."""
  values = dict(example, image_name=example["image_name"].encode("utf-8"))
  pieces = []
  for name in _WIRE_ORDER:
    head, data = _feature(values[name])
    entry_head = _ENTRY_HEADS[name] + _varint(len(head) + len(data))
    pieces += [b"\n" + _varint(len(entry_head) + len(head) + len(data)) + entry_head + head, data]
  return b"".join([b"\n", _varint(sum(map(len, pieces))), *pieces])


class RowSerializer:
  """Serialises the make_example dicts of one shard as TFDS does (feature_spec.serialize_example),
  through encode_example. The first example is also serialised by TFDS; if the two differ
  (another TFDS or protobuf), TFDS serialises the shard, and an example encode_example cannot
  write goes to TFDS, which raises its own error: the records are TFDS's, byte for byte."""

  def __init__(self, feature_spec):
    self.feature_spec = feature_spec
    self.direct = None  # unknown until the first example

  def __call__(self, example):
    if self.direct is False:
      return self.feature_spec.serialize_example(example)
    try:
      record = encode_example(example)
    except (TypeError, ValueError, AttributeError, KeyError):  # UnicodeEncodeError, ...
      return self.feature_spec.serialize_example(example)
    if self.direct is None:
      expected = self.feature_spec.serialize_example(example)
      self.direct = record == expected
      if not self.direct:
        logging.warning("TFDS serialises examples otherwise than shards.encode_example: "
                        "writing through TFDS (slower)")
        return expected
    return record


def write_metadata(out_dir, feature_spec, schema, description="", crop=keypoints_lib.CROP_AS_STORED,
                   input_size=None, split_infos=None):
  """Writes schema.json and TFDS's metadata beside the shards. Both record the keypoint
  convention and how the images were cropped (`facekp.core.keypoints.metadata`), so predict can
  check that it crops faces the same way. `split_infos`: tfds.core.SplitInfo of each split, or
  None to let TFDS read every shard to count them."""
  record = dict(schema.to_dict(), keypoints=keypoints_lib.metadata(crop, input_size))
  files.write_json(f"{out_dir}/{dataset_info.SCHEMA_FILE}", record)
  with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints the split infos it computes
    tfds.folder_dataset.write_metadata(
        data_dir=out_dir,
        features=feature_spec,
        split_infos=split_infos,
        filename_template=dataset_info.FILENAME_TEMPLATE,
        description=description or "Face photos with MediaPipe Face Mesh keypoints (facekp).",
        metadata=tfds.core.MetadataDict(record),
        # TFDS checks by decoding the first example: through its own Tensor decoder for stored
        # pixels, which logs a deprecation warning of its own (TFDS 4.9); the input pipeline
        # reads them with no such warning (tests/test_make_tfrecords.py reads them back).
        check_data=isinstance(feature_spec["image"], tfds.features.Image),
    )


def storable_image_bytes(data, rgb):
  """The stored bytes when TensorFlow decodes them to exactly `rgb`, else a lossless PNG of it."""
  if png.is_plain_rgb_png(data) and rgb.shape[1::-1] == png.png_size(data):
    return data
  if data.startswith(png.PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    if decoded.shape == rgb.shape and np.array_equal(decoded.numpy(), rgb):
      return data
  return images.encode_png(rgb)


def _stored_image(data, path, digest):
  """(bytes to store, width, height) of an image file's bytes. `digest`: dedup.bytes_digest of
  the file when cleaning decoded it, or None: a plain RGB PNG that still holds those bytes is
  stored without a second decode."""
  if digest is not None and png.is_plain_rgb_png(data) and dedup.bytes_digest(data) == digest:
    return (data, *png.png_size(data))
  rgb = images.decode_rgb(data, path)
  return storable_image_bytes(data, rgb), rgb.shape[1], rgb.shape[0]


def make_example(images_dir, row, digest=None, pixels=False):
  """The TFDS example of one cleaned row (its image read from images_dir; `digest` as for
  _stored_image; `pixels`: the image as its decoded uint8 pixels, dataset_info.features)."""
  path = f"{images_dir}/{row.image_name}"
  if pixels:
    image = images.decode_rgb(images.read_bytes(path), path)
    height, width = image.shape[:2]
  else:
    image, width, height = _stored_image(images.read_bytes(path), path, digest)
  if (width, height) != (row.width, row.height):
    raise ValueError(f"{path} is {width}x{height} but its CSV row says {row.width}x{row.height}")
  keypoints = row.keypoints()
  return {
      "image": image,
      "image_name": row.image_name,
      "height": np.int32(height),
      "width": np.int32(width),
      "keypoints_px": keypoints.astype(np.float32),
      "keypoints": keypoints_lib.to_normalised(keypoints, width, height).astype(np.float32),
  }


def _file_size(path):
  """A file's size: os.stat where local (cheaper than tf.io.gfile.stat)."""
  return os.stat(path).st_size if files.is_local(path) else tf.io.gfile.stat(path).length


def shard_counts(splits, images_dir, num_shards, pixels_size=0):
  """Shards per non-empty split. With num_shards, train gets that many and the other splits
  as many examples per shard; otherwise each shard holds about SHARD_TARGET_BYTES of images
  (their files', or with pixels_size S their S x S x 3 pixels')."""
  counts = {}
  for split, rows in splits.items():
    if not rows:
      continue
    if num_shards:
      per_shard = max(1, len(splits["train"]) or len(rows)) / num_shards
      n = math.ceil(len(rows) / per_shard)
    else:
      size = (len(rows) * pixels_size**2 * 3 if pixels_size else
              sum(_file_size(f"{images_dir}/{r.image_name}") for r in rows))
      n = math.ceil(size / SHARD_TARGET_BYTES)
    counts[split] = min(max(1, n), len(rows))
  return counts


def shard_tasks(splits, out_dir, images_dir, num_shards, pixels_size=0):
  """(split, shard path, its rows) of every shard, rows in split order (shard_counts' rule)."""
  for split, n in shard_counts(splits, images_dir, num_shards, pixels_size).items():
    rows = splits[split]
    logging.info("writing %s: %d examples in %d shard(s)", split, len(rows), n)
    for shard, part in enumerate(np.array_split(np.arange(len(rows)), n)):
      yield split, dataset_info.shard_path(out_dir, split, shard, n), [rows[i] for i in part]


def _remove_previous_dataset(out_dir):
  """A dataset being rewritten must not look complete, nor keep shards of a former layout."""
  for name in tf.io.gfile.listdir(out_dir):
    is_shard = name.startswith(f"{dataset_info.DATASET_NAME}-") and ".tfrecord-" in name
    if is_shard or name == "dataset_info.json":
      tf.io.gfile.remove(f"{out_dir}/{name}")


def write_split_shard(out_path, rows, images_dir, num_keypoints, digests=None, pixels_size=0):
  """Writes one shard of rows (a task that worker processes can run), `digests` (one per row,
  or None) as for make_example, `pixels_size` as for dataset_info.features; returns
  write_shard's (examples, bytes)."""
  digests = digests or [None] * len(rows)
  feature_spec = dataset_info.features(num_keypoints, pixels_size)
  return write_shard(out_path, (make_example(images_dir, row, digest, pixels=bool(pixels_size))
                                for row, digest in zip(rows, digests)),
                      feature_spec, RowSerializer(feature_spec))


def _split_infos(shard_splits, written):
  """tfds.core.SplitInfo of each split from its shards' (examples, bytes), in shard order: what
  TFDS would count by reading every shard back."""
  infos = {}
  for split, (count, num_bytes) in zip(shard_splits, written):
    info = infos.setdefault(split, {"name": split, "shard_lengths": [], "num_bytes": 0})
    info["shard_lengths"].append(count)
    info["num_bytes"] += num_bytes
  return [tfds.core.SplitInfo(**infos[split]) for split in sorted(infos)]  # TFDS's order


def write_dataset(out_dir, splits, images_dir, schema, num_shards=None, map_fn=map,
                  crop=keypoints_lib.CROP_AS_STORED, input_size=None, digests=None,
                  pixels_size=0):
  """Writes the shards of every non-empty split and the TFDS metadata. Returns {split: count}.

  `map_fn(function, *iterables)` runs the shard writing: the builtin map, or a process pool's.
  `digests`: {image name: dedup.bytes_digest when cleaning decoded it} (make_example).
  `pixels_size`: S to store every image as raw S x S pixels (dataset_info.features), 0 as is.
  """
  if not any(splits.values()):
    raise ValueError(f"no usable rows to write to {out_dir} (see {dataset_info.CLEANING_REPORT})")
  _remove_previous_dataset(out_dir)
  tasks = list(shard_tasks(splits, out_dir, images_dir, num_shards, pixels_size))
  task_splits, paths, shard_rows = zip(*tasks)
  digests = digests or {}
  shard_digests = [[digests.get(row.image_name) for row in rows] for rows in shard_rows]
  written = list(map_fn(write_split_shard, paths, shard_rows, [images_dir] * len(tasks),
                        [schema.num_keypoints] * len(tasks), shard_digests,
                        [pixels_size] * len(tasks)))
  for split, rows in splits.items():
    if not rows:
      logging.warning("split %r is empty: the dataset has no %r split", split, split)
  write_metadata(out_dir, dataset_info.features(schema.num_keypoints, pixels_size), schema,
                 crop=crop, input_size=input_size, split_infos=_split_infos(task_splits, written))
  return {split: len(rows) for split, rows in splits.items()}
