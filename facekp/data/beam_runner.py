r"""make_tfrecords as an Apache Beam pipeline: the same stages, spread over Beam's workers.

  python -m tools.make_tfrecords --images=DIR --out=OUT --runner=beam \
      --beam_pipeline_options=direct_num_workers=2,direct_running_mode=multi_processing

List the images (here) -> label each image with MediaPipe (one FaceMesh per worker, built in
DoFn.setup; with --align the crops go to OUT/aligned) -> face_keypoints.csv -> clean each name
(its image's size and facekp.data.dedup fingerprint from one decode) -> in one worker: the groups of
copies, cleaned.csv, cleaning_report.json, duplicates.json, the splits (every group of copies in
one) and their shards -> the shards written in parallel -> TFDS metadata (here). The files, splits
and examples are the same as the local pool's; only the journal is absent: a failed Beam run
starts over.

Everything is written to OUT.incomplete and moved to OUT at the end, so OUT is either a
complete dataset or absent (a non-empty OUT is refused). Without a --runner among the options,
Beam's portable FnApiRunner runs here (Beam's own default, Prism, downloads a binary first).
"""
import os
import time

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.runners.portability import fn_api_runner
import tensorflow as tf

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoint_csv
from facekp.core import keypoints
from facekp.data import annotate
from facekp.data import cleaning
from facekp.data import make_tfrecords as driver
from facekp.data import shards
from facekp.data import splits

STAGING_SUFFIX = ".incomplete"
# The listed image names, one a line, read by the workers (not held in the pipeline's graph,
# which Dataflow limits to 10 MB); removed before the dataset is moved to OUT.
_NAMES_FILE = "image_names.txt"
# The file that makes a folder a dataset (dataset_info.builder looks for it): moved in last.
_DATASET_INFO = "dataset_info.json"


def parse_options(text):
  """'k1=v1,k2=v2' (TFDS's --beam_pipeline_options) -> PipelineOptions(['--k1=v1', ...])."""
  args = [f"--{item.strip()}" for item in (text or "").split(",") if item.strip()]
  for arg in args:
    if "=" not in arg:
      raise ValueError(f"--beam_pipeline_options: {arg[2:]!r} is not KEY=VALUE (give e.g. "
                       "direct_num_workers=2,direct_running_mode=multi_processing)")
  return pipeline_options.PipelineOptions(args)


def make_pipeline(options):
  """A Beam pipeline on the named --runner, else on the FnApiRunner (nothing downloaded)."""
  if options.view_as(pipeline_options.StandardOptions).runner:
    return beam.Pipeline(options=options)
  return beam.Pipeline(runner=fn_api_runner.FnApiRunner(), options=options)


# --- The stages, as Beam transforms ------------------------------------------------------------


class LabelImage(beam.DoFn):
  """Image name -> its CSV rows, with this worker's FaceMesh (built once, in setup).

  The "labelling_ms" distribution holds the wall clock (ms) as each image starts and ends:
  its min and max bound the labelling, without the workers' start-up.
  """

  def __init__(self, settings):
    self._settings = settings
    self._labeller = None
    self._clock = beam.metrics.Metrics.distribution("facekp", "labelling_ms")
    self._faces = beam.metrics.Metrics.counter("facekp", "faces")

  def setup(self):
    self._labeller = annotate.Labeller(self._settings)

  def process(self, name):
    self._clock.update(int(time.time() * 1000))
    rows = self._labeller.rows_for(name)
    self._clock.update(int(time.time() * 1000))
    self._faces.inc(sum(row.status == keypoint_csv.OK for row in rows))
    yield from rows


def label(pipeline, names, settings):
  """The rows of every image, labelled in parallel. `names`: a list, or the path of a text
  file of them, one a line."""
  source = (beam.io.ReadFromText(names) if isinstance(names, str) else beam.Create(names))
  return (pipeline
          | "Names" >> source
          | "Spread" >> beam.Reshuffle()
          | "Label" >> beam.ParDo(LabelImage(settings)))


def labelling_seconds(result):
  """Seconds from the first image's start to the last one's end in a finished run."""
  clock, = result.metrics().query(beam.metrics.MetricsFilter().with_name("labelling_ms"))[
      "distributions"]
  return (clock.committed.max - clock.committed.min) / 1000


def clean_name(name_rows, images_root):
  """(name, its rows) -> (kept rows, cleaning report, cleaning.read_images of the rows: the
  image's size and fingerprint from one decode) of cleaning.clean on that name alone."""
  _, rows = name_rows
  rows = list(rows)
  read = cleaning.read_images(rows, images_root)
  return (*cleaning.clean(rows, images_root, read), read)


def add_reports(a, b):
  """The cleaning report of two disjoint sets of rows: counts added, key by key."""
  if isinstance(a, dict) or isinstance(b, dict):
    a, b = a or {}, b or {}
    return {key: add_reports(a.get(key, 0), b.get(key, 0)) for key in {**a, **b}}
  return a + b


class SumReports(beam.CombineFn):

  def create_accumulator(self):
    return {}

  def add_input(self, accumulator, report):
    return add_reports(accumulator, report)

  def merge_accumulators(self, accumulators):
    total = {}
    for accumulator in accumulators:
      total = add_reports(total, accumulator)
    return total

  def extract_output(self, accumulator):
    if "missing_keypoints_by_status" in accumulator:  # cleaning.clean sorts it
      accumulator["missing_keypoints_by_status"] = dict(
          sorted(accumulator["missing_keypoints_by_status"].items()))
    return accumulator


def cut_into_shards(kept, report, read, out_dir, images_root, schema, fractions, num_shards):
  """The global step, in one worker: copies among all kept rows (from the fingerprints the
  cleaning made in parallel), cleaned.csv, cleaning_report.json, duplicates.json, the splits;
  yields (shard path, its rows, their bytes digests) as shards.write_dataset cuts them."""
  kept = sorted(kept, key=lambda row: row.image_name)
  split_keys, _ = cleaning.write_cleaned(kept, report, out_dir, schema, read)
  split_rows = splits.assign_splits(kept, fractions, split_keys)
  digests = cleaning.digests(kept, read)
  for _, path, rows in shards.shard_tasks(split_rows, out_dir, images_root, num_shards):
    yield path, rows, [digests[row.image_name] for row in rows]


def write_shard(path_rows_digests, images_root, num_keypoints):
  path, rows, digests = path_rows_digests
  return shards.write_split_shard(path, rows, images_root, num_keypoints, digests)


def write_csv(rows, path, schema):
  keypoint_csv.write_keypoints_csv(path, sorted(rows, key=lambda r: r.image_name), schema)


def build(pipeline, names, settings, schema, images_root, fractions, num_shards):
  """Adds every stage, from image names (as for `label`) to shards, to `pipeline`."""
  out = settings.out_dir
  rows = label(pipeline, names, settings)
  _ = (rows | "AllRows" >> beam.combiners.ToList()
       | "WriteKeypointsCsv" >> beam.Map(write_csv, f"{out}/{dataset_info.KEYPOINTS_CSV}", schema))
  cleaned = (rows
             | "ByName" >> beam.Map(lambda row: (row.image_name, row))
             | "GroupByName" >> beam.GroupByKey()
             | "Clean" >> beam.Map(clean_name, images_root))
  kept = cleaned | "Kept" >> beam.FlatMap(lambda kept_report_read: kept_report_read[0])
  report = (cleaned | "Reports" >> beam.Map(lambda kept_report_read: kept_report_read[1])
            | "SumReports" >> beam.CombineGlobally(SumReports()))
  read = cleaned | "Reads" >> beam.FlatMap(lambda kept_report_read: kept_report_read[2].items())
  return (kept
          | "AllKept" >> beam.combiners.ToList()
          | "Shards" >> beam.FlatMap(cut_into_shards, beam.pvalue.AsSingleton(report),
                                     beam.pvalue.AsDict(read), out, images_root, schema,
                                     fractions, num_shards)
          | "SpreadShards" >> beam.Reshuffle()
          | "WriteShards" >> beam.Map(write_shard, images_root, schema.num_keypoints))


# --- The run: staging folder, pipeline, metadata, publishing -----------------------------------


def _is_empty(folder):
  return not tf.io.gfile.exists(folder) or not tf.io.gfile.listdir(folder)


def _clear(folder):
  """Empties a staging folder left by a failed run (the lock file stays: this run holds it)."""
  if not tf.io.gfile.exists(folder):
    return
  for name in tf.io.gfile.listdir(folder):
    if name.rstrip("/") != files.LOCK_FILE:
      files.remove_quietly(f"{folder}/{name.rstrip('/')}")


def publish(staging, out_dir):
  """Moves the finished staging folder to out_dir, the dataset_info.json last."""
  for name in (files.LOCK_FILE, _NAMES_FILE):
    files.remove_quietly(f"{staging}/{name}")
  if files.is_local(out_dir):
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty: checked before the run
    os.replace(staging, out_dir)
    return
  # An object store renames files, not folders: every file, the dataset_info.json last.
  paths = [f"{folder}/{name}" for folder, _, names in tf.io.gfile.walk(staging)
           for name in names]
  for path in sorted(paths, key=lambda path: path.endswith(f"/{_DATASET_INFO}")):
    target = out_dir + path[len(staging):]
    tf.io.gfile.makedirs(os.path.dirname(target))
    tf.io.gfile.rename(path, target, overwrite=True)
  tf.io.gfile.rmtree(staging)


def make_tfrecords(images_dir, out_dir, *, landmarks, fractions, align=0, num_shards=0,
                   max_faces=10, options=""):
  """Runs every stage on Beam; returns the summary dict make_tfrecords returns."""
  out_dir = out_dir.rstrip("/")
  if not _is_empty(out_dir):
    raise ValueError(f"{out_dir} is not empty: --runner=beam writes a whole new dataset (in "
                     f"{out_dir}{STAGING_SUFFIX}, moved there at the end); choose a new --out, "
                     "or delete it first")
  beam_options = parse_options(options)
  images_dir = images_dir.rstrip("/")
  staging = out_dir + STAGING_SUFFIX
  with files.folder_lock(staging, "--out"):
    _clear(staging)
    timings = {}
    with driver.timed(timings, "schema"):
      schema = driver.load_or_make_schema(staging, landmarks)
    names = annotate.list_sources(images_dir, exclude=[staging, out_dir])
    names_file = f"{staging}/{_NAMES_FILE}"
    files.atomic_write(names_file, "".join(f"{name}\n" for name in names))
    settings = annotate.with_crop_stems(
        annotate.Settings(images_dir, staging, schema.mesh_indices, align, max_faces), names)
    images_root = f"{staging}/{annotate.ALIGNED_DIR}" if align else images_dir
    with driver.timed(timings, "pipeline"):
      with make_pipeline(beam_options) as pipeline:
        build(pipeline, names_file, settings, schema, images_root, fractions, num_shards)
    report = files.read_json(f"{staging}/{dataset_info.CLEANING_REPORT}", "cleaning report")
    if not report["kept"]:
      raise ValueError(f"no usable rows to write to {out_dir} (see "
                       f"{staging}/{dataset_info.CLEANING_REPORT})")
    with driver.timed(timings, "metadata"):
      kept = keypoint_csv.read_keypoints_csv(f"{staging}/{dataset_info.CLEANED_CSV}", schema)
      shards.write_metadata(staging, dataset_info.features(schema.num_keypoints), schema,
                            crop=keypoints.crop_method(align),
                            input_size=align or driver.common_size(kept))
      infos = dataset_info.builder(staging).info.splits
    publish(staging, out_dir)
  counts = {split: infos[split].num_examples if split in infos else 0 for split in splits.SPLITS}
  return driver.summary(report, counts, timings)
