"""The model card of an export: what the model takes and returns, what it was trained on, how well
it does, and how it was made.

facekp.serve.export writes it beside the models, in two forms of the same content:
  model_card.json  for programs: facekp.load and facekp.serve.predict read their checks from it
                   first ("keypoints": coordinate convention, crop and input size; "schema")
  README.md        for people
Its fields:
  input, output    the serving signature: uint8 RGB faces [N, S, S, 3] cropped as "keypoints"
                   says -> normalised and pixel keypoints [N, K, 2]
  keypoints        facekp.core.keypoints.metadata of the model (and "flip_tta")
  schema, landmarks  slot order: name, Face Mesh index and mirror slot of each slot, and the flip
                   permutation (None when the dataset's schema.json was not at hand)
  training_data    the dataset folder, its faces per split (TFDS metadata), its crop and what
                   cleaning kept; "sources": where the photos came from (None: not recorded)
  accuracy         the model on the test split of its own dataset beside the mean shape and the
                   teacher floor (workdir/eval/test/metrics.json), or NOT_EVALUATED
  training         the config file (as recorded at training time, or else facekp's config
                   closest to config.json), the overrides that make config.json of it, and the
                   facekp.main command line that trains it
"""
import json

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import logging
import tensorflow as tf

import facekp
from facekp.core import dataset_info
from facekp.core import files
from facekp.core import keypoints as keypoints_lib
from facekp.core import workdir as workdir_lib

CARD_FILE = "model_card.json"
README_FILE = "README.md"
NOT_EVALUATED = "not evaluated"
# The summary of each predictor in "accuracy" (the keys of facekp.eval.evaluate's metrics.json).
ACCURACY_KEYS = ("num_faces", "mae_px", "nme", "failure_rate_0.10", "auc_0.10")
PREDICTORS = ("model", "model_flip_tta", "mean_shape", "teacher_floor")
PROTOCOLS = ("aligned", "perturbed")
TEST_EVALUATION = "test"  # facekp.eval.evaluate's folder for the test split of the own dataset


def landmarks(schema):
  """One entry per slot: its name, Face Mesh index and the slot of its mirror partner."""
  permutation = schema.flip_permutation
  return [{"slot": k, "name": name, "mesh_index": index, "mirror_slot": permutation[k]}
          for k, (name, index) in enumerate(zip(schema.names, schema.mesh_indices))]


def training_data(data_dir):
  """The dataset's folder, faces per split, crop and cleaning counts, as far as it is at hand."""
  summary = {"data_dir": str(data_dir) if data_dir else None, "faces": None, "crop": None,
             "cleaning": None, "sources": None}
  if not data_dir or not tf.io.gfile.exists(f"{data_dir}/dataset_info.json"):
    return summary
  splits = dataset_info.builder(data_dir).info.splits
  summary["faces"] = {name: int(split.num_examples) for name, split in splits.items()}
  if tf.io.gfile.exists(f"{data_dir}/{dataset_info.SCHEMA_FILE}"):
    summary["crop"] = (dataset_info.read_metadata(data_dir) or {}).get("crop")
  if tf.io.gfile.exists(f"{data_dir}/{dataset_info.CLEANING_REPORT}"):
    report = files.read_json(f"{data_dir}/{dataset_info.CLEANING_REPORT}", "cleaning report",
                             expect=dict)
    summary["cleaning"] = {key: report.get(key) for key in ("rows", "kept", "dropped")}
  return summary


def _predictor_summary(metrics):
  return None if metrics is None else {key: metrics.get(key) for key in ACCURACY_KEYS}


def accuracy(workdir):
  """The test-split evaluation of the workdir (model, mean shape, teacher floor, gap closed per
  protocol), or NOT_EVALUATED."""
  folder = workdir_lib.path(workdir, f"{workdir_lib.EVAL}/{TEST_EVALUATION}")
  path = f"{folder}/metrics.json"
  if not tf.io.gfile.exists(path):
    return NOT_EVALUATED
  metrics = files.read_json(path, "evaluation metrics", expect=dict)
  summary = {key: metrics.get(key) for key in ("split", "data_dir", "num_faces", "image_size")}
  summary["metrics_file"] = path
  model_file = workdir_lib.path(workdir, workdir_lib.MODEL)
  if (tf.io.gfile.exists(model_file)
      and tf.io.gfile.stat(model_file).mtime_nsec > tf.io.gfile.stat(path).mtime_nsec):
    summary["note"] = "evaluated before model.keras was last written: evaluate it again"
  for protocol in PROTOCOLS:
    results = metrics.get(protocol) or {}
    summary[protocol] = {name: _predictor_summary(results[name]) for name in PREDICTORS
                         if name in results}
    for key in ("gap_closed_mae_px", "gap_closed_nme"):
      summary[protocol][key] = results.get(key)
  return summary


def training(workdir, config, data_dir):
  """The config file, its overrides and the facekp.main command that trains this config."""
  source = workdir_lib.read_config_source(workdir) or {}
  config_file = source.get("config_file")
  base = _recorded_config(config_file, source.get("cwd")) if config_file else None
  if base is not None:
    overrides, how = cli.config_differences(config, base), "recorded at training time"
  else:
    how = ("not recorded" if not config_file else f"{config_file} recorded but unreadable now"
           ) + ": facekp's config closest to config.json"
    config_file, overrides = cli.closest_config(config)
  overrides = {field: value for field, value in overrides.items() if field != "data_dir"}
  return {"config_file": config_file, "config_file_source": how, "overrides": overrides,
          "cwd": source.get("cwd"),
          "command": cli.training_command(config_file=config_file, workdir=workdir,
                                          data_dir=data_dir, overrides=overrides)}


def _recorded_config(config_file, cwd):
  """The recorded config file's config as a dict, or None when it cannot be read any more."""
  if cwd and not config_file.startswith("/"):
    config_file = f"{cwd}/{config_file}"
  try:
    return cli.config_as_dict(cli.load_config_file(config_file))
  except Exception as e:  # pylint: disable=broad-except  (a card is written whatever the file does)
    logging.warning("model card: cannot read the config %s (%s: %s)", config_file,
                    type(e).__name__, e)
    return None


def build(*, workdir, data_dir, schema, keypoints, exports):
  """The card of an export as a dict. exports: {file name in the export folder: what it is}."""
  config = workdir_lib.read_config(workdir)
  size = keypoints["input_size"]
  return {
      "model_card_version": 1,
      "facekp_version": facekp.__version__,
      "workdir": str(workdir),
      "files": dict(exports),
      "input": {"images": f"uint8 RGB [N, {size}, {size}, 3]", "input_size": size,
                "crop": keypoints["crop"]},
      "output": {"keypoints": "float32 [N, K, 2], x and y normalised to 0..1 by the input size",
                 "keypoints_px": f"float32 [N, K, 2], x and y in pixels of the {size} px input"},
      "keypoints": dict(keypoints),
      "schema": schema.to_dict() if schema else None,
      "landmarks": landmarks(schema) if schema else None,
      "training_data": training_data(data_dir),
      "accuracy": accuracy(workdir),
      "training": training(workdir, config, data_dir or config.get("data_dir")),
  }


# The README: the same content for people.


def _percent(value):
  return "-" if value is None else f"{100 * value:.2f} %"


def _number(value, digits=3):
  return "-" if value is None else f"{value:.{digits}f}"


def _accuracy_lines(summary):
  if summary == NOT_EVALUATED:
    return ["Not evaluated: run `python -m facekp.eval.evaluate --workdir=WORKDIR` (or "
            "`facekp.evaluate_model`), then export again."]
  lines = [f"On the {summary['split']} split of `{summary['data_dir']}` "
           f"({summary['num_faces']} faces, {summary['image_size']} px; from "
           f"`{summary['metrics_file']}`). NME is by the inter-ocular distance; the teacher floor "
           "is MediaPipe against itself on the mirrored face, the finest a model can be judged.",
           ""]
  if summary.get("note"):
    lines += [f"Note: {summary['note']}.", ""]
  labels = {"model": "model", "model_flip_tta": "model + flip TTA", "mean_shape": "mean shape",
            "teacher_floor": "teacher floor"}
  lines += ["| protocol | predictor | MAE px | NME | FR>10% | AUC@10% |",
            "|---|---|---|---|---|---|"]
  for protocol in PROTOCOLS:
    for name in PREDICTORS:
      if name not in summary[protocol]:
        continue
      m = summary[protocol][name] or {}
      lines.append(f"| {protocol} | {labels[name]} | {_number(m.get('mae_px'))} | "
                   f"{_percent(m.get('nme'))} | {_percent(m.get('failure_rate_0.10'))} | "
                   f"{_number(m.get('auc_0.10'))} |")
  gaps = [f"{protocol} {_percent(summary[protocol].get('gap_closed_nme'))}"
          for protocol in PROTOCOLS]
  return lines + ["", "Share of the NME gap from mean shape to teacher floor that the model "
                  f"closes: {', '.join(gaps)}."]


def _landmark_lines(card):
  if not card["landmarks"]:
    return ["Unknown: the dataset's schema.json was not at hand at export time; the points are "
            "named point_1, point_2, ... in slot order."]
  lines = ["| slot | name | Face Mesh index | mirror slot |", "|---|---|---|---|"]
  lines += [f"| {m['slot']} | {m['name']} | {m['mesh_index']} | {m['mirror_slot']} |"
            for m in card["landmarks"]]
  return lines + ["", "\"Left\" and \"right\" are the subject's own. A horizontal flip maps x to "
                  "W - x and moves each slot's point into its mirror slot: flip permutation "
                  f"{card['schema']['flip_permutation']}."]


def _data_lines(data):
  if data["faces"] is None:
    return [f"Dataset `{data['data_dir']}`: not found at export time, so its size is unknown."]
  faces = ", ".join(f"{split} {data['faces'][split]}"
                    for split in sorted(data["faces"], key=dataset_info.split_order))
  lines = [f"Dataset `{data['data_dir']}`: {faces} faces; crop `{data['crop']}`."]
  if data["cleaning"]:
    cleaning = data["cleaning"]
    lines.append(f"Cleaning kept {cleaning['kept']} of {cleaning['rows']} labelled rows "
                 f"(dropped: {cleaning['dropped']}).")
  lines.append("Sources of the photos: " + (data["sources"] or "not recorded by the dataset."))
  return lines


def _crop_words(crop):
  if keypoints_lib.is_aligned_crop(crop):
    return (f"`{crop}`, facekp's FFHQ-style alignment, which facekp.load and facekp.serve.predict "
            "apply to photos")
  return (f"`{crop}` (not facekp's alignment: facekp.load and facekp.serve.predict feed it "
          "FFHQ-style crops, which may differ from what it learnt on)")


def markdown(card):
  """The README.md of an export: the card's content for people."""
  keypoints, training_run = card["keypoints"], card["training"]
  files_list = [f"- `{name}`: {what}" for name, what in card["files"].items()]
  lines = [
      f"# Facial keypoint model: `{card['workdir']}`", "",
      f"Exported by facekp {card['facekp_version']}. `model_card.json` holds the same content "
      "for programs.", "",
      "## Files", "", *files_list, "",
      "## Input and output", "",
      f"Input: {card['input']['images']}, one face cropped as its training faces were: "
      f"{_crop_words(keypoints['crop'])}. Output `keypoints`: {card['output']['keypoints']}; "
      "`keypoints_px`: "
      f"{card['output']['keypoints_px']}.",
      f"Coordinates are `{keypoints['coordinates']}`: pixel i's centre is at i + 0.5, an image "
      "of width W spans [0, W]." + (" Each face is averaged with its mirror (flip TTA)."
                                    if keypoints.get("flip_tta") else ""), "",
      "## The keypoints", "", *_landmark_lines(card), "",
      "## Training data", "", *_data_lines(card["training_data"]), "",
      "## Accuracy", "", *_accuracy_lines(card["accuracy"]), "",
      "## How it was trained", "",
      f"Config `{training_run['config_file']}` ({training_run['config_file_source']})"
      + (f", run from `{training_run['cwd']}`" if training_run["cwd"] else "") + ":", "",
      "```", training_run["command"], "```", "",
      "## Use", "",
      "```python", "import facekp", "",
      f"with facekp.load({json.dumps(card['workdir'] + '/export')}) as model:  # this folder",
      "  faces = model.predict(\"photo.jpg\")  # points in the photo's pixels", "```", "",
  ]
  return "\n".join(lines)


def write(out_dir, card):
  """Writes model_card.json and README.md into the export folder (each whole or not at all)."""
  files.write_json(f"{out_dir}/{CARD_FILE}", card)
  files.atomic_write(f"{out_dir}/{README_FILE}", markdown(card))


def read(folder):
  """The model card in a folder, or None."""
  path = f"{folder}/{CARD_FILE}"
  return files.read_json(path, "model card", expect=dict) if tf.io.gfile.exists(path) else None
