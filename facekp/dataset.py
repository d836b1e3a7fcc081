"""The TFDS dataset that make_tfrecords writes and the input pipeline reads.

Layout of a dataset directory (`--out`):
  face_keypoints.csv, cleaned.csv, cleaning_report.json   (annotation and cleaning)
  schema.json                                             (facekp.schema.Schema)
  facekp-<split>.tfrecord-0000i-of-0000n                  (TFDS-serialised examples)
  dataset_info.json, features.json, metadata.json         (written by TFDS)
`tfds.builder_from_directory(out)` loads every split with its features spec.
"""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp import schema as schema_lib

SPLITS = ("train", "validation", "test")
SCHEMA_FILE = "schema.json"
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
DATASET_NAME = "facekp"


def features(num_keypoints):
  """Image bytes as stored (PNG or JPEG), its size, and keypoints in pixels and in [0, 1]."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "image_name": tfds.features.Text(),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "keypoints_px": tfds.features.Tensor(shape=(num_keypoints, 2), dtype=np.float32),
      "keypoints": tfds.features.Tensor(shape=(num_keypoints, 2), dtype=np.float32),
  })


def shard_path(out_dir, split, shard, num_shards):
  return f"{out_dir}/{DATASET_NAME}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


def write_shard(path, examples, feature_spec):
  """Writes serialised examples to `path` through a temporary name: a shard that exists is whole.

  Each example is a dict with the keys of `features()`; "image" holds encoded bytes.
  """
  tmp = path + ".incomplete"
  with tf.io.TFRecordWriter(tmp) as writer:
    for example in examples:
      writer.write(feature_spec.serialize_example(example))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def write_metadata(out_dir, feature_spec, schema, description=""):
  """Lets TFDS compute the split infos from the shards and write its metadata beside them."""
  schema.save(f"{out_dir}/{SCHEMA_FILE}")
  tfds.folder_dataset.write_metadata(
      data_dir=out_dir,
      features=feature_spec,
      split_infos=None,
      filename_template=FILENAME_TEMPLATE,
      description=description or "Face photos with MediaPipe Face Mesh keypoints (facekp).",
      metadata=tfds.core.MetadataDict(schema.to_dict()),
  )


def load_schema(data_dir):
  path = f"{data_dir}/{SCHEMA_FILE}"
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(
        f"{data_dir} is not a facekp dataset: {SCHEMA_FILE} is missing "
        "(create one with `python -m tools.make_tfrecords --images=DIR --out=DIR`)")
  return schema_lib.Schema.load(path)


def builder(data_dir):
  """The TFDS builder of a facekp dataset directory, with a clear error when it is not one."""
  if not tf.io.gfile.exists(f"{data_dir}/dataset_info.json"):
    raise FileNotFoundError(
        f"{data_dir} is not a facekp dataset: dataset_info.json is missing "
        "(create one with `python -m tools.make_tfrecords --images=DIR --out=DIR`)")
  return tfds.builder_from_directory(data_dir)
