"""Evaluates a trained workdir: the seed's and the field's metrics, read against two yardsticks.

  python -m facekp.eval.evaluate --workdir=runs/effnet_aug [--split=test] [--data_dir=OTHER]
                            [--tta_flip]

Two protocols on the faces of one split (facekp.eval.yardsticks):
  aligned    the faces as stored (FFHQ-style crops: the five points sit nearly still);
  perturbed  the same faces under a fixed, seeded rotation, zoom and shift.
Each reports MAE (normalised and in pixels), Huber loss, NME by the inter-ocular distance,
failure rates at NME > 10 % and 5 %, AUC of the CED up to 10 % and MAE per keypoint
(facekp.eval.metrics), for the model and for two yardsticks computed on the same images: the mean
shape (the model's own training mean, recorded at training time, so any labelled facekp dataset
can be scored, even one with only a test split) and the teacher floor. The share of the gap
between the two yardsticks that the model closes is the headline figure.

Each evaluation writes its own folder, so no split or dataset overwrites another:
  workdir/eval/<split>/                 the split of the dataset the model was trained on
  workdir/eval/<dataset>-<hash>-<split>/  a split of another dataset (--data_dir; <dataset> is
                                        its folder's name, <hash> six hex digits of its
                                        absolute path: a/data and b/data differ)
The last line printed names the folder.
holding metrics.json: workdir, data_dir, split, name, num_faces, image_size, keypoint_names,
huber_delta, mean_shape_source; "aligned" and "perturbed" (the latter with its "perturbation"
parameters), each holding "model", "model_flip_tta" (with --tta_flip), "mean_shape",
"teacher_floor" (None when MediaPipe found no face; "num_left_out" counts the images it missed)
and "gap_closed_mae_px", "gap_closed_nme"; every predictor has num_faces, mae, mae_px, huber,
mean_point_error_px, per_keypoint_mae_px, nme, failure_rate_0.10, failure_rate_0.05, auc_0.10.
"ced" holds the curves (share of faces with NME <= each threshold) behind the CED picture.
And pictures/: <name>_faces.png, <name>_faces_perturbed.png, <name>_worst_faces.png,
<name>_ced.png and training_curves.png (when history.csv exists).
"""
import hashlib
import os
import re

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from facekp.core import dataset_info
from facekp.core import drawing
from facekp.core import files
from facekp.core import keypoints as keypoints_lib
from facekp.core import workdir as workdir_lib
from facekp.eval import metrics as metrics_lib
from facekp.eval import plots
from facekp.eval import yardsticks
from facekp.input import input_pipeline
from facekp.models import flip_tta
from facekp.models import keypoint_model

CED_POINTS = 101
EVAL = "eval"
LEGEND = "label (green, hollow) and prediction (red)"


# Predictions and test-time flip.

def predict(model, images, batch_size=64):
  """Model output on uint8-valued images, float32 normalised [N, K, 2]."""
  outputs = [np.asarray(model(tf.convert_to_tensor(images[i:i + batch_size]), training=False),
                        np.float32) for i in range(0, len(images), batch_size)]
  return np.concatenate(outputs)


def predict_flip_tta(model, images, flip_permutation, batch_size=64):
  """Mean of the prediction on each image and the mapped-back prediction on its mirror, through
  the layers that exports bake in (facekp.models.flip_tta)."""
  averaged = flip_tta.with_flip_tta(model, flip_permutation, np.shape(images)[1:])
  return predict(averaged, images, batch_size)


# One protocol, end to end.

def evaluate_protocol(model, images, keypoints, mean_shape, schema, *, tta_flip, huber_delta):
  """Metrics of the model, mean shape and teacher floor on one set of faces.

  Returns (metrics dict, per-image NME per predictor, model predictions).
  """
  size = images.shape[1]
  names, eyes = schema.names, schema.eye_slots
  predictions = {"model": predict(model, images),
                 "mean shape": np.broadcast_to(mean_shape, keypoints.shape)}
  if tta_flip:
    predictions["model + flip TTA"] = predict_flip_tta(model, images, schema.flip_permutation)
  keys = {"model": "model", "mean shape": "mean_shape", "model + flip TTA": "model_flip_tta"}
  results = {keys[name]: metrics_lib.keypoint_metrics(pred, keypoints, size, names, eyes,
                                                      huber_delta)
             for name, pred in predictions.items()}
  nme = {}
  if eyes is not None:
    true_px = keypoints_lib.to_pixels(keypoints, size)
    nme = {name: metrics_lib.nme_per_image(keypoints_lib.to_pixels(pred, size), true_px, eyes)
           for name, pred in predictions.items()}
  floor, floor_nme = yardsticks.teacher_floor(images, keypoints, schema, huber_delta)
  results["teacher_floor"] = floor
  if floor_nme is not None:
    nme["teacher floor"] = floor_nme
  for key in ("mae_px", "nme"):
    results[f"gap_closed_{key}"] = metrics_lib.gap_closed(results["model"],
                                                          results["mean_shape"], floor, key)
  return results, nme, predictions["model"]


def describe(metrics):
  """"the test split" or "the test split of OTHER" for titles and the table."""
  where = "" if metrics["name"] == metrics["split"] else f" of {metrics['data_dir']}"
  return f"the {metrics['split']} split{where}"


# Table.

def _row(protocol, label, m):
  if m is None:
    return f"{protocol:<10} {label:<24} {'(no faces found)':>10}"
  nme = m.get("nme")
  cells = [f"{m['mae_px']:7.3f}", f"{m['mae']:8.5f}", f"{m['huber']:9.2e}"]
  if nme is None:
    cells += ["      -"] * 4
  else:
    cells += [f"{100 * nme:6.2f}%", f"{100 * m['failure_rate_0.10']:6.1f}%",
              f"{100 * m['failure_rate_0.05']:6.1f}%", f"{m['auc_0.10']:7.3f}"]
  return f"{protocol:<10} {label:<24} " + " ".join(cells)


def format_table(metrics):
  lines = [
      f"facekp evaluation of {metrics['workdir']} on {describe(metrics)} "
      f"({metrics['num_faces']} faces, {metrics['image_size']} px; mean shape from "
      f"{metrics['mean_shape_source']})",
      f"{'protocol':<10} {'predictor':<24} {'MAE px':>7} {'MAE':>8} {'Huber':>9} "
      f"{'NME':>7} {'FR>10%':>7} {'FR>5%':>7} {'AUC@10%':>7}",
  ]
  for protocol in ("aligned", "perturbed"):
    results = metrics[protocol]
    floor = results["teacher_floor"]
    floor_label = "teacher floor" + (f" (n={floor['num_faces']})" if floor else "")
    rows = [("mean-shape baseline", results["mean_shape"]), ("model", results["model"])]
    if "model_flip_tta" in results:
      rows.append(("model + flip TTA", results["model_flip_tta"]))
    rows.append((floor_label, floor))
    lines += [_row(protocol, label, m) for label, m in rows]
    share, share_nme = results["gap_closed_mae_px"], results["gap_closed_nme"]
    if share is None:
      lines.append(f"{'':<10} no gap between the yardsticks: the teacher floor is missing or "
                   "not below the mean shape")
    else:
      lines.append(f"{'':<10} the model closes {round(100 * share)}% of the gap from mean shape "
                   "to teacher floor (MAE px)" +
                   (f", {round(100 * share_nme)}% by NME" if share_nme is not None else ""))
  per_point = metrics["aligned"]["model"]["per_keypoint_mae_px"]
  lines.append("model MAE px per keypoint (aligned): " +
               ", ".join(f"{n} {v:.2f}" for n, v in per_point.items()))
  return "\n".join(lines)


# Pictures.

def _short(names):
  return [drawing.short_name(str(n)) for n in names]


def draw_pictures(picture_dir, name, title, arrays, pred, perturbed, pred_perturbed, nme,
                  nme_perturbed, names, history_path):
  """The pictures of one evaluation; returns the paths written."""
  tf.io.gfile.makedirs(picture_dir)
  size = arrays["images"].shape[1]
  px = lambda points: keypoints_lib.to_pixels(points, size)
  first = np.arange(min(drawing.GRID_FACES, len(pred)))
  captions = _short(arrays["image_names"])
  paths = [f"{picture_dir}/{name}_faces.png", f"{picture_dir}/{name}_faces_perturbed.png"]
  drawing.face_grid(paths[0], arrays["images"][first], px(arrays["keypoints"][first]),
                  px(pred[first]), names, captions=[captions[i] for i in first],
                  title=f"{title}: {LEGEND}", total=len(pred))
  drawing.face_grid(paths[1], perturbed[0][first], px(perturbed[1][first]),
                  px(pred_perturbed[first]), names, captions=[captions[i] for i in first],
                  title=f"{title}, perturbed protocol: {LEGEND}", total=len(pred))
  if "model" in nme:
    worst = np.argsort(-nme["model"])[:drawing.GRID_FACES]
    paths += [f"{picture_dir}/{name}_worst_faces.png", f"{picture_dir}/{name}_ced.png"]
    drawing.face_grid(paths[2], arrays["images"][worst], px(arrays["keypoints"][worst]),
                    px(pred[worst]), names,
                    captions=[f"{captions[i]}\nNME {100 * nme['model'][i]:.1f}%" for i in worst],
                    title=f"{title}, worst by NME: {LEGEND}", total=len(pred), chosen="worst")
    faces = f"{len(pred)} face{'s' if len(pred) > 1 else ''}"
    plots.ced_curves(paths[3], [(f"{title}, aligned ({faces})", nme),
                                (f"{title}, perturbed ({faces})", nme_perturbed)],
                     limit=metrics_lib.AUC_LIMIT)
  if tf.io.gfile.exists(history_path):
    try:
      history = plots.history_columns(workdir_lib.read_history(history_path))
    except ValueError as e:  # the evaluation stands without the curves
      logging.warning("no training curves: %s", e)
    else:
      paths.append(f"{picture_dir}/training_curves.png")
      plots.training_curves(paths[-1], history)
  return paths


# The workdir.

def _absolute(data_dir):
  """A dataset's path as one spelling: links and relative parts resolved (when local)."""
  path = str(data_dir).rstrip("/")
  return os.path.realpath(path) if files.is_local(path) else path


def output_name(data_dir, trained_on, split):
  """"<split>" for the dataset the model was trained on, "<dataset>-<hash>-<split>" for another:
  <dataset> is its folder's name and <hash> the first 6 hex digits of the sha256 of its absolute
  path, so that two datasets of one folder name (a/data, b/data) never share an output."""
  where = _absolute(data_dir)
  if not trained_on or where == _absolute(trained_on):
    return split
  dataset_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", where.split("/")[-1]) or "dataset"
  digest = hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:6]
  return f"{dataset_name}-{digest}-{split}"


def output_dir(workdir, name):
  return workdir_lib.path(workdir, f"{EVAL}/{name}")


def evaluate_workdir(workdir, data_dir=None, split="test", *, tta_flip=False, pictures=True):
  """Evaluates workdir/model.keras on a split of its own or another labelled facekp dataset.

  Writes metrics.json and pictures into output_dir(workdir, name); returns the metrics.
  """
  config = workdir_lib.read_config(workdir, required=("image_size", "huber_delta"))
  data_dir = data_dir or config.get("data_dir")
  if not data_dir:
    raise ValueError(f"{workdir}/{workdir_lib.CONFIG} names no data_dir: pass --data_dir")
  image_size = int(config["image_size"])
  huber_delta = float(config["huber_delta"])
  schema = dataset_info.load_schema(data_dir)
  arrays = input_pipeline.load_arrays(data_dir, split, image_size=image_size)
  if not len(arrays["images"]):
    raise ValueError(f"the {split} split of {data_dir} is empty")
  model = keypoint_model.load_model(workdir)
  mean_shape, mean_source = yardsticks.training_mean(workdir, config)
  if mean_shape.shape != arrays["keypoints"].shape[1:]:
    raise ValueError(f"{data_dir} labels {arrays['keypoints'].shape[1]} keypoints but the model "
                     f"was trained on {mean_shape.shape[0]}: evaluate it on a dataset of its "
                     "own schema")
  name = output_name(data_dir, config.get("data_dir"), split)
  logging.info("evaluating %s on %d %s faces of %s", workdir, len(arrays["images"]), split,
               data_dir)

  aligned, nme, pred = evaluate_protocol(
      model, arrays["images"], arrays["keypoints"], mean_shape, schema,
      tta_flip=tta_flip, huber_delta=huber_delta)
  perturbed = yardsticks.perturb(arrays["images"], arrays["keypoints"], schema.flip_permutation)
  perturbed_results, nme_perturbed, pred_perturbed = evaluate_protocol(
      model, perturbed[0], perturbed[1], mean_shape, schema,
      tta_flip=tta_flip, huber_delta=huber_delta)
  perturbed_results["perturbation"] = yardsticks.perturbation()

  thresholds = np.linspace(0.0, metrics_lib.AUC_LIMIT, CED_POINTS)
  curves = lambda per_image: {k: metrics_lib.ced(v, thresholds).tolist()
                              for k, v in per_image.items()}
  metrics = {
      "workdir": str(workdir), "data_dir": str(data_dir), "split": split, "name": name,
      "num_faces": int(len(arrays["images"])), "image_size": image_size,
      "keypoint_names": list(schema.names), "huber_delta": huber_delta,
      "mean_shape_source": mean_source,
      "aligned": aligned, "perturbed": perturbed_results,
      "ced": {"thresholds": thresholds.tolist(), "aligned": curves(nme),
              "perturbed": curves(nme_perturbed)},
  }
  out = output_dir(workdir, name)
  tf.io.gfile.makedirs(out)
  files.write_json(f"{out}/metrics.json", metrics)
  written = [f"{out}/metrics.json"]
  if pictures:
    written += draw_pictures(f"{out}/pictures", name, describe(metrics), arrays, pred, perturbed,
                             pred_perturbed, nme, nme_perturbed, schema.names,
                             workdir_lib.path(workdir, workdir_lib.HISTORY))
  print(format_table(metrics), flush=True)
  print(f"wrote {out}/: " + ", ".join(p[len(out) + 1:] for p in written), flush=True)
  return metrics


def define_flags():
  """Command-line flags, defined only when run as a program (facekp.main imports this module)."""
  cli.define_workdir("Training workdir (config.json, model.keras).")
  flags.DEFINE_string("data_dir", None, "Any labelled facekp dataset; default: the one the "
                      "model was trained on (the workdir's config).")
  flags.DEFINE_string("split", "test", "Split to evaluate on.")
  flags.DEFINE_bool("tta_flip", False, "Also report test-time flip averaging.")
  flags.DEFINE_bool("pictures", True, "Draw pictures into workdir/eval/<name>/pictures.")


def main(argv):
  f = flags.FLAGS
  evaluate_workdir(f.workdir, f.data_dir, f.split, tta_flip=f.tta_flip, pictures=f.pictures)


# The facekp-evaluate command (python -m facekp.eval.evaluate).
run = cli.command(main, define_flags)


if __name__ == "__main__":
  run()
