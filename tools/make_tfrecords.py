r"""Turns a folder of face photos into an annotated TFDS dataset of TFRecord shards.

  python -m tools.make_tfrecords --images=PATH/TO/ffhq128 --out=data/ffhq128_kp
  python -m tools.make_tfrecords --images=PATH/TO/photos --out=data/photos_kp --align=128

The command line of facekp.data.make_tfrecords.make_tfrecords (see it for the stages).
"""
from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags

from facekp.core import schema as schema_lib
from facekp.data import make_tfrecords as driver

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "images", None, "Folder of images, searched recursively (PNG, JPEG, WebP, BMP, GIF, TIFF, "
    "PNM by extension). Image names are paths relative to it, with '/'.")
flags.DEFINE_string(
    "out", None, "Output folder: face_keypoints.csv, cleaned.csv, cleaning_report.json, "
    "schema.json, the TFRecord shards and TFDS metadata (and aligned/ with --align).")
flags.DEFINE_integer(
    "align", 0, "32 to 4096: treat --images as raw photos: crop every face found FFHQ-style to "
    "ALIGN x ALIGN pixels (lossless PNG under OUT/aligned/<name>_f<k>.png) and annotate the "
    "crops. 0: annotate the images as they are (e.g. FFHQ-128).")
flags.DEFINE_string(
    "landmarks", ",".join(map(str, schema_lib.DEFAULT_MESH_INDICES)),
    "Face Mesh indices of the keypoints, in slot order. Every index's mirror partner must be "
    "among them (partners are derived by running Face Mesh on mirrored sample faces).")
flags.DEFINE_integer(
    "workers", 0, "Annotation worker processes, one FaceMesh each, up to 256 (0: one per CPU "
    "core).")
flags.DEFINE_string(
    "split", "0.8,0.1,0.1", "Fractions of photos for train, validation and test (summing to 1). "
    "Assigned by a hash of the photo name: stable when images are added or removed, and all "
    "faces of one photo, and all copies of an image (facekp.data.dedup), land in the same split.")
flags.DEFINE_integer(
    "num_shards", 0, "TFRecord shards of the train split; validation and test get shards of "
    "the same number of examples, up to 99999. 0: about one shard per 64 MiB of images.")
flags.DEFINE_integer(
    "max_faces", 10, "With --align: at most this many faces per photo (1 to 100).")
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
    "runner", "local", ["local", "beam"], "local: worker processes on this machine (resumable "
    "through a journal). beam: an Apache Beam pipeline (pip install -e '.[beam]'), on the "
    "runner named in --beam_pipeline_options (default: Beam's FnApiRunner on this machine).")
flags.DEFINE_string(
    "beam_pipeline_options", "", "With --runner=beam: Beam pipeline options as KEY=VALUE,... "
    "e.g. direct_num_workers=2,direct_running_mode=multi_processing, or "
    "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,...")


def main(argv):
  driver.make_tfrecords(
      FLAGS.images, FLAGS.out, align=FLAGS.align,
      landmarks=schema_lib.parse_mesh_indices(FLAGS.landmarks), workers=FLAGS.workers,
      split=FLAGS.split, num_shards=FLAGS.num_shards, max_faces=FLAGS.max_faces,
      csv=FLAGS.csv, chunk_size=FLAGS.chunk_size, csv_units=FLAGS.csv_units,
      runner=FLAGS.runner, beam_options=FLAGS.beam_pipeline_options)


def run():
  """The facekp-make-tfrecords command (python -m tools.make_tfrecords)."""
  flags.mark_flags_as_required(["images", "out"])
  cli.run(main)


if __name__ == "__main__":
  run()
