"""The dataset driver: a folder of face photos -> an annotated TFDS dataset of TFRecord shards.

`make_tfrecords(images_dir, out_dir, ...)` is what `python -m tools.make_tfrecords` runs. Stages: list images -> [align faces] -> annotate with MediaPipe Face Mesh (face_keypoints.csv)
-> clean (cleaned.csv, cleaning_report.json) -> find copies (facekp.data.dedup: same bytes, same
pixels, near-identical faces; duplicates.json) -> split by a hash of the photo name, every group
of copies in one split -> shards and TFDS metadata. Running it again reuses the finished
annotation (also after a crash or kill) of every image whose content is unchanged (its sha256 is
compared on every run; facekp.data.annotate).
"""
import contextlib
import json
import os
import time

from absl import logging
import tensorflow as tf

from facekp.core import checks
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoint_csv
from facekp.core import keypoints
from facekp.core import schema as schema_lib
from facekp.data import annotate
from facekp.data import cleaning
from facekp.data import mirror
from facekp.data import shards
from facekp.data import splits

_PARALLEL_WRITE_MIN_ROWS = 5000
# What the flags accept. A crop below 32 px gives Face Mesh (which looks at 192 px) too little
# to label; the upper bounds keep a typo from starting thousands of processes or writing crops
# of gigabytes.
ALIGN_SIZES = (32, 4096)
MAX_WORKERS = 256
MAX_SHARDS = 99_999  # shard names hold five digits
MAX_FACES = 100
MAX_CHUNK_SIZE = 100_000
CSV_UNITS = ("pixels", "normalised")
RUNNERS = ("local", "beam")


def load_or_make_schema(out_dir, mesh_indices):
  """The schema of a previous run in out_dir when it has the same landmarks, else derived anew."""
  path = f"{out_dir}/{dataset_info.SCHEMA_FILE}"
  if tf.io.gfile.exists(path):
    schema = schema_lib.Schema.load(path)
    if schema.mesh_indices == tuple(mesh_indices):
      return schema
  schema = mirror.make_schema(mesh_indices)
  logging.info("mirror partners of %s: %s (flip permutation %s)", schema.mesh_indices,
               schema.mirror_indices, schema.flip_permutation)
  return schema


def read_csv(csv, images_dir, schema, units):
  """A user's CSV, its names relative to images_dir and its points in pixels."""
  rows = keypoint_csv.relative_names(keypoint_csv.read_keypoints_csv(csv, schema), images_dir,
                                     f"--csv={csv}")
  if units == "normalised":
    return cleaning.normalised_to_pixels(rows, images_dir)
  if cleaning.looks_normalised(rows):
    raise ValueError(f"--csv={csv}: every point lies in [0, 1], so these look like normalised "
                     "coordinates, not pixels: pass --csv_units=normalised to convert them")
  return rows


def annotate_or_read(images_dir, out_dir, schema, pool, *, align, max_faces, csv, chunk_size,
                     csv_units="pixels"):
  """(keypoint rows, the folder their image names are relative to)."""
  if csv:
    return read_csv(csv, images_dir, schema, csv_units), images_dir
  settings = annotate.Settings(images_dir.rstrip("/"), out_dir, schema.mesh_indices, align,
                               max_faces)
  rows = annotate.annotate_folder(settings, schema, chunk_size=chunk_size, pool=pool)
  return rows, f"{out_dir}/{annotate.ALIGNED_DIR}" if align else settings.images_dir


def clean_and_report(rows, images_root, out_dir, schema, map_fn=map):
  """Cleans the rows and finds copies among the kept images. Returns (kept rows, report,
  {image name: split key}: copies share a key, so they land in one split; {image name: bytes
  digest} of the kept images as decoded, for shards.write_dataset)."""
  read = cleaning.read_images(rows, images_root, map_fn)  # sizes and fingerprints: one decode
  kept, report = cleaning.clean(rows, images_root, read)
  split_keys, groups = cleaning.write_cleaned(kept, report, out_dir, schema, read)
  logging.info("cleaning: kept %d of %d rows; dropped %s; missing keypoints by status %s; "
               "%d groups of copies (%d images, kept, each group in one split)",
               report["kept"], report["rows"], report["dropped"],
               report["missing_keypoints_by_status"], len(groups), sum(map(len, groups)))
  return kept, report, split_keys, cleaning.digests(kept, read)


def common_size(rows):
  """The side of every image when all are the same square, else None."""
  sizes = {(row.width, row.height) for row in rows}
  if len(sizes) == 1:
    width, height = sizes.pop()
    return width if width == height else None
  return None


@contextlib.contextmanager
def timed(timings, stage):
  start = time.time()
  yield
  timings[f"{stage}_s"] = round(time.time() - start, 2)


def check_arguments(images_dir, out_dir, *, align, landmarks, workers, split, num_shards,
                    max_faces, csv, chunk_size, csv_units, runner, beam_options):
  """Every argument of make_tfrecords, before any work: ValueError (or a file error) naming
  the flag and what it accepts. Returns the split fractions."""
  checks.input_folder("images", images_dir, "image folder")
  checks.output_folder("out", out_dir)
  if align != 0:
    checks.integer("align", align, *ALIGN_SIZES)
  schema_lib.check_mesh_indices(landmarks)
  checks.integer("workers", workers, 0, MAX_WORKERS)
  fractions = splits.parse_fractions(split)
  checks.integer("num_shards", num_shards, 0, MAX_SHARDS)
  checks.integer("max_faces", max_faces, 1, MAX_FACES)
  checks.integer("chunk_size", chunk_size, 0, MAX_CHUNK_SIZE)
  checks.choice("csv_units", csv_units, CSV_UNITS)
  checks.choice("runner", runner, RUNNERS)
  if csv is not None:
    checks.input_file("csv", csv, "CSV file")
  elif csv_units != "pixels":
    raise ValueError(f"--csv_units={csv_units} applies to the points of a --csv file: give "
                     "--csv=FILE, or leave --csv_units out")
  if csv and align:
    raise ValueError("--csv builds from existing keypoints and --align annotates new crops: "
                     "give one of them (to reuse crops, pass --images=OUT/aligned --csv=...)")
  items = [item.strip() for item in (beam_options or "").split(",") if item.strip()]
  if items and runner != "beam":
    raise ValueError("--beam_pipeline_options apply to --runner=beam only")
  for item in items:
    if "=" not in item or not item.split("=", 1)[0].strip():
      raise ValueError(f"--beam_pipeline_options: {item!r} is not KEY=VALUE (give e.g. "
                       "direct_num_workers=2,direct_running_mode=multi_processing)")
  return fractions


def make_tfrecords(images_dir, out_dir, *, align=0, landmarks=schema_lib.DEFAULT_MESH_INDICES,
                   workers=0, split="0.8,0.1,0.1", num_shards=0, max_faces=10, csv=None,
                   chunk_size=0, csv_units="pixels", runner="local", beam_options=""):
  """Runs every stage under a lock on out_dir; returns a summary dict (also logged). Every
  argument is checked first (check_arguments)."""
  fractions = check_arguments(
      images_dir, out_dir, align=align, landmarks=landmarks, workers=workers, split=split,
      num_shards=num_shards, max_faces=max_faces, csv=csv, chunk_size=chunk_size,
      csv_units=csv_units, runner=runner, beam_options=beam_options)
  if runner == "beam":
    return run_on_beam(images_dir, out_dir, align=align, landmarks=landmarks, fractions=fractions,
                       num_shards=num_shards, max_faces=max_faces, csv=csv, options=beam_options)
  out_dir = out_dir.rstrip("/")
  with files.explain_disk_full(out_dir, "--out"):
    tf.io.gfile.makedirs(out_dir)
    with files.folder_lock(out_dir, "--out"):
      removed = sum(files.remove_temporaries(folder) for folder, _, _ in os.walk(out_dir))
      if removed:
        logging.info("removed %d temporary file(s) that a killed run left in %s", removed,
                     out_dir)
      return _make_tfrecords(images_dir, out_dir, align=align, landmarks=landmarks,
                             workers=workers, fractions=fractions, num_shards=num_shards,
                             max_faces=max_faces, csv=csv, chunk_size=chunk_size,
                             csv_units=csv_units)


def _make_tfrecords(images_dir, out_dir, *, align, landmarks, workers, fractions, num_shards,
                    max_faces, csv, chunk_size, csv_units):
  timings = {}
  with timed(timings, "schema"):
    schema = load_or_make_schema(out_dir, landmarks)
  with annotate.Pool(workers) as pool:
    with timed(timings, "annotate"):
      rows, images_root = annotate_or_read(images_dir, out_dir, schema, pool, align=align,
                                           max_faces=max_faces, csv=csv, chunk_size=chunk_size,
                                           csv_units=csv_units)
    # Starting workers costs seconds; worth it for many images or when they already run.
    parallel = lambda n: pool.map if pool.started or n >= _PARALLEL_WRITE_MIN_ROWS else map
    with timed(timings, "clean"):
      kept, report, split_keys, digests = clean_and_report(rows, images_root, out_dir, schema,
                                                           parallel(len(rows)))
    with timed(timings, "write"):
      counts = shards.write_dataset(out_dir, splits.assign_splits(kept, fractions, split_keys),
                                     images_root, schema, num_shards or None,
                                     map_fn=parallel(len(kept)),
                                     crop=keypoints.crop_method(align),
                                     input_size=align or common_size(kept),
                                     digests=digests)
  result = summary(report, counts, timings)
  logging.info("done: %s", json.dumps(result))
  return result


def summary(report, counts, timings):
  """What make_tfrecords returns and logs: rows, kept, dropped, copies, split sizes, timings."""
  return {"rows": report["rows"], "kept": report["kept"], "dropped": report["dropped"],
          "duplicate_groups": report["duplicates"]["groups"], "splits": counts, **timings}


def run_on_beam(images_dir, out_dir, *, csv, **kwargs):
  if csv:
    raise ValueError("--csv is not supported with --runner=beam: build from a CSV locally")
  try:
    from facekp.data import beam_runner  # pylint: disable=g-import-not-at-top (an optional extra)
  except ImportError as e:
    raise ValueError(f"--runner=beam needs Apache Beam ({e}): pip install -e '.[beam]'") from None
  result = beam_runner.make_tfrecords(images_dir, out_dir, **kwargs)
  logging.info("done: %s", json.dumps(result))
  return result
