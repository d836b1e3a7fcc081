r"""Turns a folder of face photos into an annotated TFDS dataset of TFRecord shards.

  python -m tools.make_tfrecords --images=PATH/TO/ffhq128 --out=data/ffhq128_kp
  python -m tools.make_tfrecords --images=PATH/TO/photos --out=data/photos_kp --align=128

Stages: list images -> [align faces] -> annotate with MediaPipe Face Mesh (face_keypoints.csv)
-> clean (cleaned.csv, cleaning_report.json) -> split by a hash of the photo name -> shards and
TFDS metadata. Running it again reuses the finished annotation (also after a crash or kill).
"""
import contextlib
import json
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from facekp import annotate
from facekp import dataset
from facekp import schema as schema_lib

_IMAGES = flags.DEFINE_string(
    "images", None, "Folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF, "
    "PNM by extension). Image names are paths relative to it, with '/'.")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder: face_keypoints.csv, cleaned.csv, cleaning_report.json, "
    "schema.json, the TFRecord shards and TFDS metadata (and aligned/ with --align).")
_ALIGN = flags.DEFINE_integer(
    "align", 0, "If > 0, treat --images as raw photos: crop every face found FFHQ-style to "
    "ALIGN x ALIGN pixels (lossless PNG under OUT/aligned/<name>_f<k>.png) and annotate the "
    "crops. 0: annotate the images as they are (e.g. FFHQ-128).")
_LANDMARKS = flags.DEFINE_string(
    "landmarks", ",".join(map(str, schema_lib.DEFAULT_MESH_INDICES)),
    "Face Mesh indices of the keypoints, in slot order. Every index's mirror partner must be "
    "among them (partners are derived by running Face Mesh on mirrored sample faces).")
_WORKERS = flags.DEFINE_integer(
    "workers", 0, "Annotation worker processes, one FaceMesh each (0: one per CPU core).")
_SPLIT = flags.DEFINE_string(
    "split", "0.8,0.1,0.1", "Fractions of photos for train, validation and test (summing to 1). "
    "Assigned by a hash of the photo name: stable when images are added or removed, and all "
    "faces of one photo land in the same split.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, "TFRecord shards of the train split; validation and test get shards of "
    "the same number of examples. 0: about one shard per 64 MiB of images.")
_MAX_FACES = flags.DEFINE_integer(
    "max_faces", 10, "With --align: at most this many faces per photo.")
_CSV = flags.DEFINE_string(
    "csv", None, "Skip annotation: build the dataset from this existing CSV (image_name and "
    "point_1_x ... point_K_y in pixels; width, height, status optional), names relative to "
    "--images.")
_CHUNK_SIZE = flags.DEFINE_integer(
    "chunk_size", 16, "Images per worker task; the journal commits once per chunk.")
_RUNNER = flags.DEFINE_enum(
    "runner", "local", ["local", "beam"], "local: worker processes on this machine (resumable "
    "through a journal). beam: an Apache Beam pipeline (pip install -e '.[beam]'), on the "
    "runner named in --beam_pipeline_options (default: Beam's FnApiRunner on this machine).")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "With --runner=beam: Beam pipeline options as KEY=VALUE,... "
    "e.g. direct_num_workers=2,direct_running_mode=multi_processing, or "
    "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,...")


_PARALLEL_WRITE_MIN_ROWS = 5000


def load_or_make_schema(out_dir, mesh_indices):
  """The schema of a previous run in out_dir when it has the same landmarks, else derived anew."""
  path = f"{out_dir}/{dataset.SCHEMA_FILE}"
  if tf.io.gfile.exists(path):
    schema = schema_lib.Schema.load(path)
    if schema.mesh_indices == tuple(mesh_indices):
      return schema
  schema = annotate.make_schema(mesh_indices)
  logging.info("mirror partners of %s: %s (flip permutation %s)", schema.mesh_indices,
               schema.mirror_indices, schema.flip_permutation)
  return schema


def annotate_or_read(images_dir, out_dir, schema, pool, *, align, max_faces, csv, chunk_size):
  """(keypoint rows, the folder their image names are relative to)."""
  if csv:
    return dataset.read_keypoints_csv(csv, schema), images_dir
  settings = annotate.Settings(images_dir.rstrip("/"), out_dir, schema.mesh_indices, align,
                               max_faces)
  rows = annotate.annotate_folder(settings, schema, chunk_size=chunk_size, pool=pool)
  return rows, f"{out_dir}/{annotate.ALIGNED_DIR}" if align else settings.images_dir


def clean_and_report(rows, images_root, out_dir, schema):
  kept, report = dataset.clean(rows, images_root)
  dataset.write_keypoints_csv(f"{out_dir}/{dataset.CLEANED_CSV}", kept, schema)
  dataset.write_report(f"{out_dir}/{dataset.CLEANING_REPORT}", report)
  logging.info("cleaning: kept %d of %d rows; dropped %s; missing keypoints by status %s",
               report["kept"], report["rows"], report["dropped"],
               report["missing_keypoints_by_status"])
  return kept, report


@contextlib.contextmanager
def timed(timings, stage):
  start = time.time()
  yield
  timings[f"{stage}_s"] = round(time.time() - start, 2)


def make_tfrecords(images_dir, out_dir, *, align=0, landmarks=schema_lib.DEFAULT_MESH_INDICES,
                   workers=0, split="0.8,0.1,0.1", num_shards=0, max_faces=10, csv=None,
                   chunk_size=16, runner="local", beam_options=""):
  """Runs every stage; returns a summary dict (also logged)."""
  if csv and align:
    raise ValueError("--csv builds from existing keypoints and --align annotates new crops: "
                     "give one of them (to reuse crops, pass --images=OUT/aligned --csv=...)")
  fractions = dataset.parse_fractions(split)
  if runner == "beam":
    return run_on_beam(images_dir, out_dir, align=align, landmarks=landmarks, fractions=fractions,
                       num_shards=num_shards, max_faces=max_faces, csv=csv, options=beam_options)
  out_dir = out_dir.rstrip("/")
  tf.io.gfile.makedirs(out_dir)
  timings = {}
  with timed(timings, "schema"):
    schema = load_or_make_schema(out_dir, landmarks)
  with annotate.Pool(workers) as pool:
    with timed(timings, "annotate"):
      rows, images_root = annotate_or_read(images_dir, out_dir, schema, pool, align=align,
                                           max_faces=max_faces, csv=csv, chunk_size=chunk_size)
    with timed(timings, "clean"):
      kept, report = clean_and_report(rows, images_root, out_dir, schema)
    with timed(timings, "write"):
      # Starting workers costs seconds; worth it for many images or when they already run.
      parallel = pool.started or len(kept) >= _PARALLEL_WRITE_MIN_ROWS
      counts = dataset.write_dataset(out_dir, dataset.assign_splits(kept, fractions),
                                     images_root, schema, num_shards or None,
                                     map_fn=pool.map if parallel else map)
  summary = {"rows": report["rows"], "kept": report["kept"], "dropped": report["dropped"],
             "splits": counts, **timings}
  logging.info("done: %s", json.dumps(summary))
  return summary


def run_on_beam(images_dir, out_dir, *, csv, **kwargs):
  if csv:
    raise ValueError("--csv is not supported with --runner=beam: build from a CSV locally")
  try:
    from facekp import beam_pipeline  # pylint: disable=g-import-not-at-top (an optional extra)
  except ImportError as e:
    raise ValueError(f"--runner=beam needs Apache Beam ({e}): pip install -e '.[beam]'") from None
  summary = beam_pipeline.make_tfrecords(images_dir, out_dir, make_schema=load_or_make_schema,
                                         **kwargs)
  logging.info("done: %s", json.dumps(summary))
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  make_tfrecords(
      _IMAGES.value, _OUT.value, align=_ALIGN.value,
      landmarks=schema_lib.parse_mesh_indices(_LANDMARKS.value), workers=_WORKERS.value,
      split=_SPLIT.value, num_shards=_NUM_SHARDS.value, max_faces=_MAX_FACES.value,
      csv=_CSV.value, chunk_size=_CHUNK_SIZE.value, runner=_RUNNER.value,
      beam_options=_BEAM_OPTIONS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["images", "out"])
  app.run(main)
