"""The TFDS dataset that make_tfrecords writes and the input pipeline reads.

Layout of a dataset directory (`--out`):
  face_keypoints.csv, cleaned.csv, cleaning_report.json   (annotation and cleaning)
  schema.json                                             (facekp.schema.Schema)
  facekp-<split>.tfrecord-0000i-of-0000n                  (TFDS-serialised examples)
  dataset_info.json, features.json, metadata.json         (written by TFDS)
`tfds.builder_from_directory(out)` loads every split with its features spec.

face_keypoints.csv and cleaned.csv hold one row per image:
  image_name,width,height,point_1_x,point_1_y,...,point_K_y,status
in pixels of the image as `facekp.images.load_rgb` returns it, -1.0 where there is no point
(status says why: ok, no_face, unreadable, not_an_image, ...; width and height are 0 when the
image could not be read). A user's own CSV needs only image_name and the point columns.
"""
import collections
import csv
import hashlib
import io
import json
import math
import posixpath
import re
import typing

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp import images
from facekp import schema as schema_lib

SPLITS = ("train", "validation", "test")
MISSING = -1.0
OK = "ok"
KEYPOINTS_CSV = "face_keypoints.csv"
CLEANED_CSV = "cleaned.csv"
CLEANING_REPORT = "cleaning_report.json"
SHARD_TARGET_BYTES = 64 << 20
_FACE_SUFFIX = re.compile(r"_f\d+$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
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


# --- The keypoint CSV -----------------------------------------------------------------------


class KeypointRow(typing.NamedTuple):
  """One CSV row. `points` is flat (x1, y1, ..., xK, yK); width/height are None when unknown."""
  image_name: str
  width: typing.Optional[int]
  height: typing.Optional[int]
  points: tuple
  status: str

  def keypoints(self):
    return np.asarray(self.points, dtype=np.float64).reshape(-1, 2)


def csv_header(schema):
  return ("image_name", "width", "height") + schema.csv_point_columns + ("status",)


def missing_row(image_name, num_keypoints, status, width=0, height=0):
  return KeypointRow(image_name, width, height, (MISSING,) * (2 * num_keypoints), status)


def format_csv_fields(row):
  """Fields of a row as strings; floats as their shortest exact repr (reruns match exactly)."""
  size = ["" if v is None else str(v) for v in (row.width, row.height)]
  return [row.image_name, *size, *(repr(float(v)) for v in row.points), row.status]


def _csv_text(rows, header):
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(format_csv_fields(row) for row in rows)
  return buffer.getvalue()


def write_keypoints_csv(path, rows, schema):
  """Writes rows (in the given order) through a temporary name."""
  images.write_atomic(path, _csv_text(rows, csv_header(schema)).encode())


def _field(fields, column, name, kind, where):
  """A number from a CSV row; None for an absent or blank size, MISSING for a blank point."""
  text = fields[column[name]].strip() if name in column else ""
  if not text:
    return MISSING if kind is float else None
  try:
    return kind(float(text))
  except ValueError:
    raise ValueError(f"{where}, column {name}: {text!r} is not a number") from None


def read_keypoints_csv(path, schema):
  """Reads face_keypoints.csv (or a user's CSV in the seed's format) into KeypointRows.

  Required columns: image_name and point_1_x ... point_K_y for the schema's K points; width,
  height and status are optional (unknown sizes are read from the images when cleaning).
  """
  with tf.io.gfile.GFile(path) as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    point_columns = schema.csv_point_columns
    missing = [c for c in ("image_name",) + point_columns if c not in header]
    if missing:
      raise ValueError(f"{path}: missing required column(s) {', '.join(missing)} "
                       f"(the header is {','.join(header) or 'empty'})")
    extra = sorted(c for c in header
                   if re.fullmatch(r"point_\d+_[xy]", c) and c not in point_columns)
    if extra:
      raise ValueError(f"{path}: point columns {', '.join(extra)} go beyond the "
                       f"{schema.num_keypoints} keypoints of the schema {schema.mesh_indices}")
    column = {name: i for i, name in enumerate(header)}
    rows = []
    for line_number, fields in enumerate(reader, start=2):
      if not fields:
        continue
      if len(fields) != len(header):
        raise ValueError(f"{path}, line {line_number}: {len(fields)} fields, but the header "
                         f"has {len(header)}")
      where = f"{path}, line {line_number}"
      rows.append(KeypointRow(
          image_name=fields[column["image_name"]],
          width=_field(fields, column, "width", int, where),
          height=_field(fields, column, "height", int, where),
          points=tuple(_field(fields, column, c, float, where) for c in point_columns),
          status=fields[column["status"]].strip() if "status" in column else OK))
  return rows


# --- Cleaning ---------------------------------------------------------------------------------

DROP_REASONS = ("duplicate_name", "missing_keypoints", "missing_file", "unreadable_file",
                "size_mismatch", "outside_image")


def _has_missing_points(row):
  return row.status != OK or any(v == MISSING or math.isnan(v) for v in row.points)


def _drop_reason(row, images_dir):
  """None for a usable row (with its size filled in), else the reason to drop it."""
  if _has_missing_points(row):
    return "missing_keypoints", row
  try:
    width, height = images.image_size(f"{images_dir}/{row.image_name}")
  except images.ImageError as e:
    return ("missing_file" if e.reason == "missing" else "unreadable_file"), row
  if row.width is not None and (row.width, row.height) != (width, height):
    return "size_mismatch", row
  row = row._replace(width=width, height=height)
  xy = row.keypoints()
  if (xy < 0).any() or (xy[:, 0] > width).any() or (xy[:, 1] > height).any():
    return "outside_image", row
  return None, row


def clean(rows, images_dir):
  """Drops unusable rows. Returns (kept rows, report dict with counts per reason).

  Copies of a name that agree are kept once; copies that disagree are all dropped.
  """
  by_name = collections.defaultdict(list)
  for row in rows:
    by_name[row.image_name].append(row)
  dropped = collections.Counter({reason: 0 for reason in DROP_REASONS})
  missing_by_status = collections.Counter()
  kept = []
  for name, copies in by_name.items():
    if len(set(copies)) > 1:
      dropped["duplicate_name"] += len(copies)
      continue
    dropped["duplicate_name"] += len(copies) - 1
    reason, row = _drop_reason(copies[0], images_dir)
    if reason is None:
      kept.append(row)
    else:
      dropped[reason] += 1
      if reason == "missing_keypoints":
        missing_by_status[row.status] += 1
  report = {"rows": len(rows), "kept": len(kept), "dropped": dict(dropped),
            "missing_keypoints_by_status": dict(sorted(missing_by_status.items()))}
  return kept, report


def write_report(path, report):
  images.write_atomic(path, (json.dumps(report, indent=2) + "\n").encode())


# --- Splitting --------------------------------------------------------------------------------


def parse_fractions(text):
  """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1): train, validation, test; non-negative, summing to 1."""
  try:
    fractions = tuple(float(t) for t in text.split(","))
  except ValueError:
    raise ValueError(f"--split must be three comma-separated numbers, got {text!r}") from None
  if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"--split must give {len(SPLITS)} non-negative fractions (train, validation, "
                     f"test) summing to 1, got {text!r}")
  return fractions


def group_key(image_name):
  """Faces cropped from one photo share a key: the name without extension and '_f<k>' suffix."""
  return _FACE_SUFFIX.sub("", posixpath.splitext(image_name)[0])


def split_hash(key):
  """A fixed pseudo-random number in [0, 1) per split key: splits never move when others change."""
  digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(image_name, fractions, key=None):
  """The split of an image: by a hash of `key`, by default its photo's group_key."""
  h = split_hash(group_key(image_name) if key is None else key)
  bound = 0.0
  for split, fraction in zip(SPLITS, fractions):
    bound += fraction
    if h < bound:
      return split
  return [split for split, fraction in zip(SPLITS, fractions) if fraction > 0][-1]  # rounding


def assign_splits(rows, fractions, split_keys=None):
  """{split: rows}, each ordered by hash: a fixed shuffle that keeps a photo's faces together.

  `split_keys` ({image name: key}, facekp.dedup.split_keys) overrides the photo's group_key, so
  that copies of one image under different names land in one split.
  """
  split_keys = split_keys or {}
  key_of = lambda row: split_keys.get(row.image_name) or group_key(row.image_name)
  splits = {split: [] for split in SPLITS}
  for row in sorted(rows, key=lambda r: (split_hash(key_of(r)), r.image_name)):
    splits[split_of(row.image_name, fractions, key_of(row))].append(row)
  return splits


# --- Writing the TFDS dataset -----------------------------------------------------------------


def storable_image_bytes(data, rgb):
  """The stored bytes when TensorFlow decodes them to exactly `rgb`, else a lossless PNG of it."""
  if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    if decoded.shape == rgb.shape and np.array_equal(decoded.numpy(), rgb):
      return data
  return images.encode_png(rgb)


def make_example(images_dir, row):
  """The TFDS example of one cleaned row (its image read from images_dir)."""
  path = f"{images_dir}/{row.image_name}"
  data = images.read_bytes(path)
  rgb = images.decode_rgb(data, path)
  height, width = rgb.shape[:2]
  if (width, height) != (row.width, row.height):
    raise ValueError(f"{path} is {width}x{height} but its CSV row says {row.width}x{row.height}")
  keypoints = row.keypoints()
  return {
      "image": storable_image_bytes(data, rgb),
      "image_name": row.image_name,
      "height": np.int32(height),
      "width": np.int32(width),
      "keypoints_px": keypoints.astype(np.float32),
      "keypoints": (keypoints / [width, height]).astype(np.float32),
  }


def _shard_counts(splits, images_dir, num_shards):
  """Shards per non-empty split. With num_shards, train gets that many and the other splits
  as many examples per shard; otherwise each shard holds about SHARD_TARGET_BYTES of images."""
  counts = {}
  for split, rows in splits.items():
    if not rows:
      continue
    if num_shards:
      per_shard = max(1, len(splits["train"]) or len(rows)) / num_shards
      n = math.ceil(len(rows) / per_shard)
    else:
      size = sum(tf.io.gfile.stat(f"{images_dir}/{r.image_name}").length for r in rows)
      n = math.ceil(size / SHARD_TARGET_BYTES)
    counts[split] = min(max(1, n), len(rows))
  return counts


def _remove_previous_dataset(out_dir):
  """A dataset being rewritten must not look complete, nor keep shards of a former layout."""
  for name in tf.io.gfile.listdir(out_dir):
    is_shard = name.startswith(f"{DATASET_NAME}-") and ".tfrecord-" in name
    if is_shard or name == "dataset_info.json":
      tf.io.gfile.remove(f"{out_dir}/{name}")


def write_split_shard(out_path, rows, images_dir, num_keypoints):
  """Writes one shard of rows (a task that worker processes can run); returns its size."""
  write_shard(out_path, (make_example(images_dir, row) for row in rows), features(num_keypoints))
  return len(rows)


def write_dataset(out_dir, splits, images_dir, schema, num_shards=None, map_fn=map):
  """Writes the shards of every non-empty split and the TFDS metadata. Returns {split: count}.

  `map_fn(function, *iterables)` runs the shard writing: the builtin map, or a process pool's.
  """
  if not any(splits.values()):
    raise ValueError(f"no usable rows to write to {out_dir} (see {CLEANING_REPORT})")
  _remove_previous_dataset(out_dir)
  tasks = []
  for split, n in _shard_counts(splits, images_dir, num_shards).items():
    rows = splits[split]
    for shard, part in enumerate(np.array_split(np.arange(len(rows)), n)):
      tasks.append((shard_path(out_dir, split, shard, n), [rows[i] for i in part]))
    logging.info("writing %s: %d examples in %d shard(s)", split, len(rows), n)
  paths, shard_rows = zip(*tasks)
  list(map_fn(write_split_shard, paths, shard_rows, [images_dir] * len(tasks),
              [schema.num_keypoints] * len(tasks)))
  for split, rows in splits.items():
    if not rows:
      logging.warning("split %r is empty: the dataset has no %r split", split, split)
  write_metadata(out_dir, features(schema.num_keypoints), schema)
  return {split: len(rows) for split, rows in splits.items()}
