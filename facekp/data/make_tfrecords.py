r"""The dataset driver: a folder of face photos -> an annotated TFDS dataset of TFRecord shards.

  facekp-make-tfrecords --images=PATH/TO/ffhq128 --out=data/ffhq128_kp
  facekp-make-tfrecords --images=PATH/TO/photos --out=data/photos_kp --align=128
  facekp-make-tfrecords --images=sample --out=data/sample --align=128   # the built-in sample
  facekp-make-tfrecords --images=PATH/TO/crops,PATH/TO/photos --align=0,128 --out=data/both

(in a checkout also `python -m tools.make_tfrecords ...`). `make_tfrecords(images_dir, out_dir,
...)` is what the command runs; several folders (the last line) are pooled into one dataset, each
with its own --align (facekp.data.sources). Stages: list images -> [align faces] -> annotate with
MediaPipe Face Mesh (face_keypoints.csv) -> clean (cleaned.csv, cleaning_report.json) -> find copies
(facekp.data.dedup: same bytes, same pixels, near-identical faces; duplicates.json) -> split by a
hash of the photo name, every group of copies in one split -> shards and TFDS metadata. Running
it again reuses the finished annotation (also after a crash or kill) of every image whose content
is unchanged (its sha256 is compared on every run; facekp.data.annotate).
"""
import contextlib
import json
import os
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags  # pylint: disable=wrong-import-order
from absl import logging
import tensorflow as tf

from facekp.core import checks
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoint_csv
from facekp.core import keypoints
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.data import annotate
from facekp.data import cleaning
from facekp.data import mirror
from facekp.data import shards
from facekp.data import sources as sources_lib
from facekp.data import splits

_PARALLEL_WRITE_MIN_ROWS = 5000
# What the flags accept. A crop below 32 px gives Face Mesh (which looks at 192 px) too little
# to label; the upper bounds keep a typo from starting thousands of processes or writing crops
# of gigabytes.
ALIGN_SIZES = (32, 4096)
MAX_WORKERS = 256
MAX_SHARDS = 99_999  # shard names hold five digits
MAX_FACES = 100
MAX_RECROPS = 16
MAX_CHUNK_SIZE = 100_000
CSV_UNITS = ("pixels", "normalised")
RUNNERS = ("local", "beam")
IMAGE_FORMATS = ("png", "pixels")


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


def annotate_or_read(sources, out_dir, schema, pool, *, max_faces, csv, chunk_size,
                     csv_units="pixels", reads=None, recrops=0):
  """(keypoint rows, the folder their image names are relative to). `sources`: the dataset's
  folders (facekp.data.sources.Source; --csv: one). `reads`: a dict that annotation fills with
  what it read of the images (facekp.data.annotate.image_reads)."""
  sources_lib.check_out(sources, out_dir)
  if csv:
    return read_csv(csv, sources[0].folder, schema, csv_units), sources[0].folder
  all_settings = sources_lib.settings(sources, out_dir, schema.mesh_indices, max_faces, recrops)
  if sources_lib.is_pooled(sources):
    sources_lib.prepare(sources, out_dir, all_settings)
  rows = annotate.annotate_sources(all_settings, schema, chunk_size=chunk_size, pool=pool,
                                   reads=reads)
  return rows, sources_lib.images_root(sources, out_dir)


def clean_and_report(rows, images_root, out_dir, schema, map_fn=map, known=None):
  """Cleans the rows and finds copies among the kept images. Returns (kept rows, report,
  {image name: split key}: copies share a key, so they land in one split; {image name: bytes
  digest} of the kept images as decoded, for shards.write_dataset). `known`: the images
  annotation read (cleaning.read_images)."""
  # sizes and fingerprints: one decode, in the annotation's workers or here
  read = cleaning.read_images(rows, images_root, map_fn, known)
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


def check_arguments(sources, out_dir, *, landmarks, workers, split, num_shards, max_faces, csv,
                    chunk_size, csv_units, runner, beam_options, image_format="png",
                    recrops=0):
  """Every argument of make_tfrecords, before any work: ValueError (or a file error) naming
  the flag and what it accepts. `sources`: sources_lib.make_sources of --images and --align.
  Returns the split fractions."""
  for source in sources:
    checks.input_folder("images", source.folder, "image folder")
  checks.output_folder("out", out_dir)
  for source in sources:
    if source.align != 0:
      checks.integer("align", source.align, *ALIGN_SIZES)
  schema_lib.check_mesh_indices(landmarks)
  checks.integer("workers", workers, 0, MAX_WORKERS)
  fractions = splits.parse_fractions(split)
  checks.integer("num_shards", num_shards, 0, MAX_SHARDS)
  checks.integer("max_faces", max_faces, 1, MAX_FACES)
  checks.integer("recrops", recrops, 0, MAX_RECROPS)
  if recrops and (csv or runner != "local" or not any(source.align for source in sources)):
    raise ValueError(f"--recrops={recrops} cuts new crops from raw photos and labels them: it "
                     "needs --align (on some folder), the local runner and no --csv")
  checks.integer("chunk_size", chunk_size, 0, MAX_CHUNK_SIZE)
  checks.choice("csv_units", csv_units, CSV_UNITS)
  checks.choice("runner", runner, RUNNERS)
  checks.choice("image_format", image_format, IMAGE_FORMATS)
  if image_format != "png" and runner != "local":
    raise ValueError(f"--image_format={image_format} is written by the local runner only: leave "
                     "out --runner=beam, or store PNG")
  if csv is not None:
    checks.input_file("csv", csv, "CSV file")
  elif csv_units != "pixels":
    raise ValueError(f"--csv_units={csv_units} applies to the points of a --csv file: give "
                     "--csv=FILE, or leave --csv_units out")
  if csv and sources[0].align:
    raise ValueError("--csv builds from existing keypoints and --align annotates new crops: "
                     "give one of them (to reuse crops, pass --images=OUT/aligned --csv=...)")
  if sources_lib.is_pooled(sources) and (csv or runner != "local"):
    raise ValueError(f"--images names {len(sources)} folders: pooling them needs annotation on "
                     "the local runner (--csv names images of one folder; --runner=beam reads "
                     "one folder)")
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
                   chunk_size=0, csv_units="pixels", runner="local", beam_options="",
                   image_format="png", recrops=0):
  """Runs every stage under a lock on out_dir; returns a summary dict (also logged). Every
  argument is checked first (check_arguments).

  `images_dir`: a folder, or a list of folders pooled into one dataset (facekp.data.sources: image
  names "<source>/<name>", copies across folders in one split); `align`: one value for every
  folder, or a list of one per folder. `image_format`: "png" stores each image as its file's
  bytes (or a lossless PNG of it), "pixels" as raw uint8 pixels (dataset_info.features: about
  1.9x the disk of a PNG, no decoding when read; every image must be the same square).
  `recrops`: with align, K more crops of each face, its square jittered and each labelled by
  Face Mesh (facekp.data.faces.recrops), in the train split only (facekp.data.splits).
  """
  sources = sources_lib.make_sources(images_dir, align)
  fractions = check_arguments(
      sources, out_dir, landmarks=landmarks, workers=workers, split=split,
      num_shards=num_shards, max_faces=max_faces, csv=csv, chunk_size=chunk_size,
      csv_units=csv_units, runner=runner, beam_options=beam_options, image_format=image_format,
      recrops=recrops)
  if runner == "beam":
    return run_on_beam(sources[0].folder, out_dir, align=sources[0].align, landmarks=landmarks,
                       fractions=fractions, num_shards=num_shards, max_faces=max_faces, csv=csv,
                       options=beam_options)
  out_dir = out_dir.rstrip("/")
  with files.explain_disk_full(out_dir, "--out"):
    tf.io.gfile.makedirs(out_dir)
    with files.folder_lock(out_dir, "--out"):
      removed = sum(files.remove_temporaries(folder) for folder, _, _ in os.walk(out_dir))
      if removed:
        logging.info("removed %d temporary file(s) that a killed run left in %s", removed,
                     out_dir)
      return _make_tfrecords(sources, out_dir, landmarks=landmarks, workers=workers,
                             fractions=fractions, num_shards=num_shards, max_faces=max_faces,
                             csv=csv, chunk_size=chunk_size, csv_units=csv_units,
                             image_format=image_format, recrops=recrops)


def _make_tfrecords(sources, out_dir, *, landmarks, workers, fractions, num_shards, max_faces,
                    csv, chunk_size, csv_units, image_format, recrops):
  timings = {}
  align = sources_lib.common_align(sources)  # what the dataset records of its crops
  journals = [settings.journal_path for settings in sources_lib.settings(sources, out_dir, (), 1)]
  if not csv and not all(os.path.exists(path) for path in journals):
    annotate.prepare_workers()  # a first run: workers will be needed
  with timed(timings, "schema"):
    schema = load_or_make_schema(out_dir, landmarks)
  reads = {}
  with annotate.Pool(workers) as pool:
    with timed(timings, "annotate"):
      rows, images_root = annotate_or_read(sources, out_dir, schema, pool, max_faces=max_faces,
                                           csv=csv, chunk_size=chunk_size, csv_units=csv_units,
                                           reads=reads, recrops=recrops)
    # Starting workers costs seconds; worth it for many images or when they already run.
    parallel = lambda n: pool.map if pool.started or n >= _PARALLEL_WRITE_MIN_ROWS else map
    with timed(timings, "clean"):
      unread = len(rows) - sum(checked for *_, checked in reads.values())  # to read or hash
      kept, report, split_keys, digests = clean_and_report(rows, images_root, out_dir, schema,
                                                           parallel(unread), reads)
    size = align or common_size(kept)
    if image_format == "pixels" and not size:
      raise ValueError("--image_format=pixels stores images of one square size; these differ ("
                       f"{sorted({(r.width, r.height) for r in kept})[:4]}...): use --align=S, "
                       "or store PNG")
    by_split = splits.assign_splits(kept, fractions, split_keys)
    with timed(timings, "write"):
      counts = shards.write_dataset(out_dir, by_split, images_root, schema, num_shards or None,
                                     map_fn=parallel(len(kept)),
                                     crop=keypoints.crop_method(align),
                                     input_size=size, digests=digests,
                                     pixels_size=size if image_format == "pixels" else 0)
  result = summary(report, counts, timings)
  if sources_lib.is_pooled(sources):
    result["sources"] = sources_lib.count_by_source(sources, kept)
  if recrops:
    kept_recrops = sum(splits.is_recrop(row.image_name) for row in kept)
    in_train = sum(splits.is_recrop(row.image_name) for row in by_split["train"])
    result["recrops"] = {"train": in_train,
                         "left_out_of_validation_and_test": kept_recrops - in_train}
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


def define_flags():
  """Command-line flags, defined only when run as a program (tests and benchmarks import this)."""
  flags.DEFINE_string(
      "images", None, "Folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF, "
      "PNM by extension). Image names are paths relative to it, with '/'. `sample`: the photos "
      "that ship with facekp (facekp/sample), unless the current directory has a folder of that "
      "name. Several folders, separated by commas, are pooled into one dataset: each is a "
      "source named after its folder, its images named <source>/<name>, and copies found "
      "across folders land in one split.", required=True)
  flags.DEFINE_string(
      "out", None, "Output folder: face_keypoints.csv, cleaned.csv, cleaning_report.json, "
      "schema.json, the TFRecord shards and TFDS metadata (and aligned/ with --align).",
      required=True)
  flags.DEFINE_string(
      "align", "0", "32 to 4096: treat --images as raw photos: crop every face found FFHQ-style "
      "to ALIGN x ALIGN pixels (lossless PNG under OUT/aligned/<name>_f<k>.png; pooled folders: "
      "OUT/aligned/<source>/) and annotate the crops. 0: annotate the images as they are (e.g. "
      "FFHQ-128). One value for every --images folder, or one per folder separated by commas "
      "(e.g. 0,128).")
  flags.DEFINE_string(
      "landmarks", ",".join(map(str, schema_lib.DEFAULT_MESH_INDICES)),
      "Face Mesh indices of the keypoints, in slot order. Every index's mirror partner must be "
      "among them (partners are derived by running Face Mesh on mirrored sample faces).")
  flags.DEFINE_integer(
      "workers", 0, "Annotation worker processes, one FaceMesh each, up to 256 (0: one per CPU "
      "core).")
  flags.DEFINE_string(
      "split", "0.8,0.1,0.1", "Fractions of photos for train, validation and test (summing to "
      "1). Assigned by a hash of the photo name: stable when images are added or removed, and "
      "all faces of one photo, and all copies of an image (facekp.data.dedup), land in the same "
      "split.")
  flags.DEFINE_integer(
      "num_shards", 0, "TFRecord shards of the train split; validation and test get shards of "
      "the same number of examples, up to 99999. 0: about one shard per 64 MiB of images.")
  flags.DEFINE_integer(
      "max_faces", 10, "With --align: at most this many faces per photo (1 to 100).")
  flags.DEFINE_integer(
      "recrops", 0, "With --align, up to 16: cut K more crops of every face, its square turned "
      "(up to 20 degrees), scaled (1 +- 0.15) and moved (0.06 of its side) at random, seeded by "
      "the face's name, each labelled by Face Mesh on the new crop (OUT/aligned/<name>_f<k>_r<j>"
      ".png): augmentation with the teacher's own labels. Train split only; validation and test "
      "keep the faces as cropped for prediction.")
  flags.DEFINE_string(
      "csv", None, "Skip annotation: build the dataset from this existing CSV (image_name and "
      "point_1_x ... point_K_y in pixels; width, height, status optional), names relative to "
      "--images.")
  flags.DEFINE_integer(
      "chunk_size", 0, "Images per worker task (up to 100000); the journal commits once per "
      "chunk. 0: 64, or fewer so that every worker gets four tasks.")
  flags.DEFINE_enum(
      "csv_units", "pixels", ["pixels", "normalised"], "Units of the --csv points: pixels of "
      "the image, or normalised to [0, 1] by its width and height (converted to pixels). A "
      "CSV whose points all lie in [0, 1] is refused as pixels.")
  flags.DEFINE_enum(
      "image_format", "png", IMAGE_FORMATS, "How the shards store each image: png (its file's "
      "bytes, or a lossless PNG of it; about 26 KiB a 128 px face) or pixels (raw uint8, 48 KiB "
      "a 128 px face, 3.4 GB for 70,000: a first epoch that need not decode PNGs; every image "
      "the same square).")
  flags.DEFINE_enum(
      "runner", "local", ["local", "beam"], "local: worker processes on this machine "
      "(resumable through a journal). beam: an Apache Beam pipeline (pip install "
      "'facekp[beam]'), on the runner named in --beam_pipeline_options (default: Beam's "
      "FnApiRunner on this machine).")
  flags.DEFINE_string(
      "beam_pipeline_options", "", "With --runner=beam: Beam pipeline options as KEY=VALUE,... "
      "e.g. direct_num_workers=2,direct_running_mode=multi_processing, or "
      "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,...")


def images_folder(images):
  """A folder of --images: as given, or for `sample` (and no such folder here) facekp's own."""
  if images == "sample" and not os.path.isdir(images):
    logging.info("--images=sample: the photos that ship with facekp, %s", sample.SAMPLE_DIR)
    return sample.SAMPLE_DIR
  return images


def main(argv):
  f = flags.FLAGS
  make_tfrecords(
      [images_folder(folder) for folder in sources_lib.split_folders(f.images)], f.out,
      align=sources_lib.parse_align(f.align),
      landmarks=schema_lib.parse_mesh_indices(f.landmarks), workers=f.workers, split=f.split,
      num_shards=f.num_shards, max_faces=f.max_faces, csv=f.csv, chunk_size=f.chunk_size,
      csv_units=f.csv_units, runner=f.runner, beam_options=f.beam_pipeline_options,
      image_format=f.image_format, recrops=f.recrops)


# the facekp-make-tfrecords command (python -m facekp.data.make_tfrecords; tools.make_tfrecords)
run = cli.command(main, define_flags)


if __name__ == "__main__":
  run()
