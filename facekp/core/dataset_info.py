"""A dataset folder's layout and its readers: what make_tfrecords writes and every stage reads.

Layout of a dataset directory (`--out`):
  face_keypoints.csv, cleaned.csv          (facekp.core.keypoint_csv: annotation and cleaning)
  cleaning_report.json, duplicates.json    (facekp.data.cleaning, facekp.data.dedup)
  schema.json                              (facekp.core.schema.Schema and the keypoint record)
  facekp-<split>.tfrecord-0000i-of-0000n   (TFDS-serialised examples, facekp.data.shards)
  dataset_info.json, features.json, metadata.json   (written by TFDS)
`tfds.builder_from_directory(out)` loads every split with its features spec.
"""
import hashlib

from google.protobuf import json_format
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp.core import files
from facekp.core import schema as schema_lib

KEYPOINTS_CSV = "face_keypoints.csv"
CLEANED_CSV = "cleaned.csv"
CLEANING_REPORT = "cleaning_report.json"
DUPLICATES_JSON = "duplicates.json"
SCHEMA_FILE = "schema.json"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
DATASET_NAME = "facekp"
SPLIT_ORDER = ("train", "validation", "test")  # as make_tfrecords --split gives them
REWRITE = "write the dataset again (facekp-make-tfrecords --images=DIR --out=DIR)"


def features(num_keypoints, pixels_size=0):
  """The image, its size, and keypoints in pixels and in [0, 1]. The image is stored as its file's
  bytes (PNG or JPEG), or with `pixels_size` S as its raw uint8 pixels [S, S, 3]: 48 KiB a 128 px
  face (about 1.9x a PNG of it) that reading need not decode (make_tfrecords --image_format)."""
  image = (tfds.features.Tensor(shape=(pixels_size, pixels_size, 3), dtype=np.uint8,
                                encoding=tfds.features.Encoding.BYTES) if pixels_size
           else tfds.features.Image(shape=(None, None, 3)))
  return tfds.features.FeaturesDict({
      "image": image,
      "image_name": tfds.features.Text(),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "keypoints_px": tfds.features.Tensor(shape=(num_keypoints, 2), dtype=np.float32),
      "keypoints": tfds.features.Tensor(shape=(num_keypoints, 2), dtype=np.float32),
  })


def shard_path(out_dir, split, shard, num_shards):
  return f"{out_dir}/{DATASET_NAME}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


def read_metadata(data_dir):
  """The "keypoints" record of a dataset's schema.json (facekp.core.keypoints.metadata), or None for
  a dataset written before facekp recorded it."""
  path = f"{data_dir}/{SCHEMA_FILE}"
  record = files.read_json(path, "dataset schema", expect=dict, remedy=REWRITE).get("keypoints")
  if record is not None and not isinstance(record, dict):
    raise files.damaged(path, f"its \"keypoints\" record must be an object, not "
                              f"{files.json_type(record)}", REWRITE)
  return record


def _check_folder(data_dir):
  if tf.io.gfile.exists(str(data_dir)) and not tf.io.gfile.isdir(str(data_dir)):
    raise NotADirectoryError(f"{data_dir} is a file, not a facekp dataset (a folder written by "
                             "`python -m tools.make_tfrecords --images=DIR --out=DIR`)")


def load_schema(data_dir):
  """The dataset's keypoint schema (schema.json), with a clear error when it is not a facekp
  dataset or the file is not a schema."""
  _check_folder(data_dir)
  path = f"{data_dir}/{SCHEMA_FILE}"
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{data_dir} is not a facekp dataset: {SCHEMA_FILE} is missing "
        "(create one with `facekp-make-tfrecords --images=DIR --out=DIR`)")
  return schema_lib.Schema.load(path, REWRITE)


def builder(data_dir):
  """The TFDS builder of a facekp dataset directory, with a clear error when it is not one or
  its TFDS metadata (dataset_info.json, features.json) cannot be read."""
  _check_folder(data_dir)
  if not tf.io.gfile.exists(f"{data_dir}/dataset_info.json"):
    raise FileNotFoundError(
        f"{data_dir} is not a facekp dataset: dataset_info.json is missing "
        "(create one with `facekp-make-tfrecords --images=DIR --out=DIR`)")
  for name in ("dataset_info.json", "features.json"):
    if tf.io.gfile.exists(f"{data_dir}/{name}"):
      files.read_json(f"{data_dir}/{name}", "TFDS metadata file", expect=dict, remedy=REWRITE)
  try:
    return tfds.builder_from_directory(data_dir)
  except (json_format.Error, ValueError, TypeError, KeyError, AttributeError,
          tf.errors.OpError) as e:
    problem = " ".join(str(e).split())[:300]
    raise ValueError(
        f"{data_dir}: its TFDS metadata (dataset_info.json, features.json) cannot be read "
        f"({problem}); it was damaged, or not written by tools/make_tfrecords: {REWRITE}"
        ) from None


def split_order(name):
  """A sort key: train, validation, test, then any other split by name."""
  return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def fingerprint(data_dir):
  """What a training run records of its dataset, to know it again when resuming: the number of
  examples of each split and a sha256 over every shard's split, name and content (a dataset
  rewritten with other splits, other images or other labels has another; the same dataset
  written again has the same)."""
  splits = builder(data_dir).info.splits
  names = sorted(splits.keys(), key=split_order)
  shards = [f"{name}/{path.name}/{files.file_sha256(str(path))}"
            for name in names for path in splits[name].filepaths]
  return {"splits": {name: int(splits[name].num_examples) for name in names},
          "shards_sha256": hashlib.sha256("\n".join(shards).encode("utf-8")).hexdigest()}

