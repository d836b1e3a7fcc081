"""Exports a trained workdir for serving and checks every export against the Keras model.

  python -m facekp.serve.export --workdir=runs/effnet_aug

Writes into workdir/export/:
  saved_model/                 serving signature: uint8 images [N, S, S, 3] ->
                               {"keypoints_px": [N, K, 2] pixels, "keypoints": [N, K, 2] in 0..1}
  model_float32.tflite         the same signature in TFLite
  model_dynamic_range.tflite   weights quantised to int8, activations float
  model_float16.tflite         weights stored as float16
  schema.json                  slot names and flip permutation (predict reads it)
  keypoints.json               what the model takes and returns (facekp.core.keypoints.metadata):
                               the coordinate convention, the crop its faces were made with
                               (from the dataset's metadata; "unknown" when it records none) and
                               the input size, so a reader can check what it feeds the model;
                               "flip_tta": whether the exports average each face with its mirror
                               (--tta_flip)
  export_report.json           per export: file size, max and mean |difference| from Keras in
                               pixels on test faces, CPU latency per image; "keypoints"; and
                               "files", the names of every file in export/
  model_card.json, README.md   the model card (facekp.serve.model_card): schema and landmark
                               names, coordinates, crop and input size, the training data, the
                               test accuracy beside the yardsticks, the training command
Every file is written whole or not at all (facekp.core.files), and export/ as a whole: an
export is written and checked in a temporary folder that then replaces export/, so the folder
never mixes the files of two exports (a second export with fewer --tflite variants leaves none
of the first's).
Quantised keypoint models are known to drift (tensorflow/tensorflow#39954), hence the check on
real faces: the workdir's test split, or the sample photos when the dataset is not at hand.
"""
import json
import os
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from facekp.core import checks
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoints as keypoints_lib
from facekp.core import sample
from facekp.core import workdir as workdir_lib
from facekp.input import input_pipeline
from facekp.models import flip_tta
from facekp.models import keypoint_model
from facekp.serve import loading
from facekp.serve import model_card

TFLITE_VARIANTS = ("float32", "dynamic_range", "float16")
TFLITE_DESCRIPTIONS = {"float32": "float32", "dynamic_range": "weights quantised to int8, "
                       "activations float", "float16": "weights stored as float16"}
MAX_IMAGES = 10_000  # --max_images: test faces to compare the exports on
KEYPOINTS_FILE = "keypoints.json"
EXPORT_REPORT = "export_report.json"
UNKNOWN_CROP = "unknown"


# Writing.

def write_saved_model(model, image_size, path):
  """SavedModel whose serving signature takes uint8 images and returns pixels and normalised.

  keras.export.ExportArchive (a tf.Module) tracks the Keras 3 variables so that the TFLite
  converter can freeze them; a bare tf.Module holding the model converts to a TFLite file that
  fails at run time on READ_VARIABLE.
  """
  def serve(images):
    keypoints = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
    return {"keypoints_px": keypoints_lib.to_pixels(keypoints, float(image_size)),
            "keypoints": keypoints}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(
      loading.SERVING_SIGNATURE, serve,
      input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="images")])
  with files.atomic_path(path) as tmp:
    archive.write_out(tmp, verbose=False)
    files.remove_quietly(path)  # a folder is not renamed over another


def tflite_model(saved_model_dir, variant):
  """TFLite flatbuffer bytes of the SavedModel: float32, dynamic_range or float16."""
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  if variant == "dynamic_range":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  elif variant == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif variant != "float32":
    raise ValueError(f"unknown TFLite variant {variant!r}; expected one of {TFLITE_VARIANTS}")
  return converter.convert()


# Loading: one interface for every format, used by the checks here and by facekp.serve.predict.


# Checking.


def check_images(data_dir, image_size, max_images):
  """Test faces of the dataset, or the sample photos when there is no dataset; and their source."""
  if data_dir and tf.io.gfile.exists(f"{data_dir}/dataset_info.json"):
    arrays = input_pipeline.load_arrays(data_dir, "test", image_size=image_size)
    if len(arrays["images"]):
      return arrays["images"][:max_images], f"{data_dir} test split"
  logging.warning("no dataset at %r: checking the exports on the sample photos", data_dir)
  return sample.sample_faces(image_size)[:max_images], "facekp/sample photos"


def latency_ms(model, image, repeats):
  """Median wall time of one single-image call, after two warm-up calls."""
  for _ in range(2):
    model(image)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    model(image)
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


def path_size(path):
  if not tf.io.gfile.isdir(path):
    return tf.io.gfile.stat(path).length
  return sum(tf.io.gfile.stat(os.path.join(root, name)).length
             for root, _, files in tf.io.gfile.walk(path) for name in files)


def compare(reference, candidate, images, repeats):
  """|difference| from the reference in pixels, file size and single-image latency."""
  size = candidate.image_size
  diff_px = np.abs(keypoints_lib.to_pixels(candidate(images), size)
                   - keypoints_lib.to_pixels(reference(images), size))
  return {"path": candidate.path, "size_bytes": int(path_size(candidate.path)),
          "max_abs_diff_px": float(diff_px.max()), "mean_abs_diff_px": float(diff_px.mean()),
          "latency_ms": latency_ms(candidate, images[:1], repeats)}


def format_report(report):
  lines = [f"exports of {report['workdir']} checked on {report['num_images']} images "
           f"({report['images']}), {report['image_size']} px",
           f"{'model':<28} {'size MB':>8} {'max |diff| px':>14} {'mean |diff| px':>15} "
           f"{'ms/image':>9}"]
  for name, r in report["models"].items():
    lines.append(f"{name:<28} {r['size_bytes'] / 1e6:8.2f} {r['max_abs_diff_px']:14.5f} "
                 f"{r['mean_abs_diff_px']:15.6f} {r['latency_ms']:9.2f}")
  return "\n".join(lines)


def dataset_crop(data_dir):
  """The crop method a dataset records (facekp.core.keypoints.crop_method) under "keypoints" in its
  schema.json or TFDS metadata.json, or UNKNOWN_CROP."""
  for name in (dataset_info.SCHEMA_FILE, "metadata.json"):
    path = f"{data_dir}/{name}"
    if data_dir and tf.io.gfile.exists(path):
      record = files.read_json(path, "dataset metadata", expect=dict,
                               remedy=dataset_info.REWRITE).get("keypoints")
      crop = record.get("crop") if isinstance(record, dict) else record
      if crop and not isinstance(crop, str):
        raise files.damaged(path, 'its "keypoints" record must be an object with a "crop" '
                            f"string, not {json.dumps(record)[:60]}", dataset_info.REWRITE)
      if crop:
        return crop
  return UNKNOWN_CROP


def export_workdir(workdir, *, data_dir=None, variants=TFLITE_VARIANTS, max_images=64,
                   repeats=20, tta_flip=False):
  """Writes workdir/export (SavedModel, TFLite variants, schema, keypoints metadata, model card)
  and checks it; returns the report (export_report.json). tta_flip: every export averages each
  face with its mirror.

  The export is written and checked in a temporary folder beside export/, which then replaces
  export/ whole: the folder holds exactly the files of one export, never a variant left by an
  earlier one."""
  for variant in variants:
    checks.choice("tflite", variant, TFLITE_VARIANTS)
  checks.integer("max_images", max_images, 1, MAX_IMAGES)
  if data_dir is not None:
    checks.input_folder("data_dir", data_dir, "dataset folder")
  data_dir = data_dir or workdir_lib.read_config(workdir).get("data_dir")
  model = keypoint_model.load_model(workdir)
  schema = None
  if data_dir and tf.io.gfile.exists(f"{data_dir}/{dataset_info.SCHEMA_FILE}"):
    schema = dataset_info.load_schema(data_dir)
  if tta_flip:
    if schema is None:
      raise ValueError(f"--tta_flip needs the flip permutation of the dataset's "
                       f"{dataset_info.SCHEMA_FILE}, and {data_dir!r} has none: pass --data_dir")
    model = flip_tta.with_flip_tta(model, schema.flip_permutation)
  reference = loading.keras_model(model, workdir_lib.path(workdir, workdir_lib.MODEL))
  keypoints = {**keypoints_lib.metadata(dataset_crop(data_dir), reference.image_size),
               "flip_tta": bool(tta_flip)}
  out = workdir_lib.path(workdir, workdir_lib.EXPORT)
  with files.atomic_path(out) as staging:
    tf.io.gfile.makedirs(staging)
    exports = write_exports(model, staging, schema, keypoints, variants)
    images, source = check_images(data_dir, reference.image_size, max_images)
    report_models = {name: compare(reference, candidate, images, repeats)
                     for name, candidate in [("keras", reference), *exports.items()]}
    for result in report_models.values():  # where each file will be
      result["path"] = _moved(result["path"], staging, out)
    card_files = [model_card.CARD_FILE, model_card.README_FILE]
    report = {"workdir": str(workdir), "image_size": reference.image_size, "images": source,
              "num_images": int(len(images)), "models": report_models,
              "schema": schema.to_dict() if schema else None, "keypoints": keypoints,
              "model_card": f"{out}/{model_card.CARD_FILE}",
              "files": sorted([*_listing(staging), EXPORT_REPORT, *card_files])}
    files.write_json(f"{staging}/{EXPORT_REPORT}", report)
    card = model_card.build(workdir=workdir, data_dir=data_dir, schema=schema,
                            keypoints=keypoints,
                            exports=export_files(variants, schema is not None))
    model_card.write(staging, card)
    files.remove_quietly(out)  # a folder is not renamed over another
  print(format_report(report), flush=True)
  return report


def write_exports(model, out, schema, keypoints, variants):
  """Writes schema.json (when known), keypoints.json, the SavedModel and the TFLite variants
  into `out`; returns {name: loaded export}."""
  if schema is not None:
    files.write_json(f"{out}/{dataset_info.SCHEMA_FILE}", schema.to_dict())
  files.write_json(f"{out}/{KEYPOINTS_FILE}", keypoints)
  saved_model = f"{out}/{loading.EXPORT_MODEL}"
  logging.info("writing the SavedModel")
  write_saved_model(model, keypoints["input_size"], saved_model)
  exports = {"saved_model": loading.load_saved_model(saved_model)}
  for variant in variants:
    path = f"{out}/model_{variant}.tflite"
    logging.info("converting to model_%s.tflite", variant)
    files.atomic_write(path, tflite_model(saved_model, variant))
    exports[f"tflite_{variant}"] = loading.load_tflite(path)
  return exports


def _moved(path, staging, out):
  return out + path[len(staging):] if path.startswith(staging + "/") else path


def _listing(folder):
  return [name.rstrip("/") for name in tf.io.gfile.listdir(folder)]


def export_files(variants, with_schema):
  """{file name: what it is} of an export folder."""
  found = {f"{loading.EXPORT_MODEL}/": "SavedModel, serving signature serving_default"}
  found.update({f"model_{variant}.tflite": f"TFLite, {TFLITE_DESCRIPTIONS[variant]}"
                for variant in variants})
  if with_schema:
    found[dataset_info.SCHEMA_FILE] = "the keypoint schema: slot names and flip permutation"
  found.update({KEYPOINTS_FILE: "coordinate convention, crop and input size",
                EXPORT_REPORT: "each export against the Keras model: size, difference "
                                      "in pixels, latency",
                model_card.CARD_FILE: "this card, for programs",
                model_card.README_FILE: "this card, for people"})
  return found


def define_flags():
  cli.define_workdir("Training workdir (config.json, model.keras).")
  flags.DEFINE_string("data_dir", None, "Dataset for the check; default: the workdir's config.")
  flags.DEFINE_list("tflite", list(TFLITE_VARIANTS), "TFLite variants to write.")
  flags.DEFINE_integer("max_images", 64, "Test images to compare the exports on (1 to 10000).")
  flags.DEFINE_bool("tta_flip", False, "Bake test-time flip averaging into every export (twice "
                    "the compute per face; evaluate --tta_flip shows what it gains).")


def main(argv):
  f = flags.FLAGS
  export_workdir(f.workdir, data_dir=f.data_dir, variants=f.tflite, max_images=f.max_images,
                 tta_flip=f.tta_flip)


run = cli.command(main, define_flags)  # the facekp-export command (python -m facekp.serve.export)


if __name__ == "__main__":
  run()
