"""Evaluates a trained workdir: the seed's and the field's metrics, read against two yardsticks.

  python -m facekp.evaluate --workdir=runs/effnet_aug [--split=test] [--tta_flip]

Two protocols on the test faces:
  aligned    the faces as stored (FFHQ-style crops: the five points sit nearly still);
  perturbed  the same faces under a fixed, seeded rotation, zoom and shift (labels moved with
             them, by facekp.augment), where predicting the mean shape no longer works.
Each reports MAE (normalised and in pixels), Huber loss, NME by the inter-ocular distance,
failure rates at NME > 10 % and 5 %, AUC of the CED up to 10 % and MAE per keypoint, for the model
and for two yardsticks computed on the same images:
  mean shape     the training split's mean keypoints predicted for every face;
  teacher floor  MediaPipe against itself: each image and its mirror annotated, the mirror's
                 points mapped back; no student can be judged finer than its labels.
The share of the gap between the two yardsticks that the model closes is the headline figure.

workdir/metrics.json: workdir, data_dir, split, num_faces, image_size, keypoint_names,
huber_delta; "aligned" and "perturbed" (the latter with its "perturbation" parameters), each
holding "model", "model_flip_tta" (with --tta_flip), "mean_shape", "teacher_floor" (None when
MediaPipe found no face; "num_left_out" counts the images it missed) and "gap_closed_mae_px",
"gap_closed_nme"; every predictor has num_faces, mae, mae_px, huber, mean_point_error_px,
per_keypoint_mae_px, nme, failure_rate_0.10, failure_rate_0.05, auc_0.10. "ced" holds the
curves (share of faces with NME <= each threshold) behind pictures/ced.png.
workdir/pictures/: test_faces.png, test_faces_perturbed.png, worst_faces.png, ced.png and
training_curves.png (when history.csv exists).
"""
import json

from facekp import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp import annotate
from facekp import augment
from facekp import dataset
from facekp import input_pipeline
from facekp import models  # pylint: disable=unused-import  (registers the custom layers)
from facekp import plots
from facekp import workdir as workdir_lib

FAILURE_THRESHOLDS = (0.10, 0.05)
AUC_LIMIT = 0.10
CED_POINTS = 101
# The perturbed protocol: fixed for every run so its figures compare across runs.
PERTURBATION = {"rotation": 20.0, "scale": 0.15, "translate": 0.08}
PERTURBATION_SEED = 20260606
PICTURE_FACES = 16
# Faces MediaPipe may return per image for the teacher floor; the one at the label is used.
TEACHER_MAX_FACES = 3


# Metrics: pure numpy on keypoints [N, K, 2] in pixels of S x S images.

def point_errors(pred_px, true_px):
  """Euclidean distance of each predicted point from its label: [N, K]."""
  return np.linalg.norm(np.asarray(pred_px, np.float64) - np.asarray(true_px, np.float64),
                        axis=-1)


def inter_ocular_distance(true_px, eye_slots):
  true_px = np.asarray(true_px, np.float64)
  return np.linalg.norm(true_px[:, eye_slots[0]] - true_px[:, eye_slots[1]], axis=-1)


def nme_per_image(pred_px, true_px, eye_slots):
  """Mean point error of each face divided by its labelled outer-eye-corner distance: [N]."""
  distance = inter_ocular_distance(true_px, eye_slots)
  if np.any(distance <= 0):
    raise ValueError(f"{int(np.sum(distance <= 0))} faces have coinciding eye corners; "
                     "NME is undefined for them")
  return point_errors(pred_px, true_px).mean(axis=1) / distance


def failure_rate(nme, threshold):
  """Share of faces whose NME exceeds the threshold."""
  return float(np.mean(np.asarray(nme) > threshold))


def ced(nme, thresholds):
  """Cumulative error distribution: share of faces with NME <= t, for each t."""
  nme = np.asarray(nme)
  return (nme[None, :] <= np.asarray(thresholds)[:, None]).mean(axis=1)


def auc(nme, limit=AUC_LIMIT):
  """Area under the CED from 0 to `limit`, divided by `limit` (1.0 = every face perfect).

  Computed exactly: the integral of the CED is the mean of (limit - min(nme, limit)).
  """
  return float(np.mean(np.clip(1.0 - np.asarray(nme, np.float64) / limit, 0.0, None)))


def huber(pred, true, delta=1.0):
  """Mean Huber loss over all coordinates (keras.losses.Huber on normalised keypoints)."""
  error = np.abs(np.asarray(pred, np.float64) - np.asarray(true, np.float64))
  quadratic = np.minimum(error, delta)
  return float(np.mean(0.5 * quadratic ** 2 + delta * (error - quadratic)))


def keypoint_metrics(pred, true, image_size, names, eye_slots, huber_delta=1.0):
  """All figures of one predictor on one set of faces; pred and true normalised [N, K, 2]."""
  pred = np.asarray(pred, np.float64)
  true = np.asarray(true, np.float64)
  pred_px, true_px = pred * image_size, true * image_size
  abs_px = np.abs(pred_px - true_px)
  metrics = {
      "num_faces": int(len(pred)),
      "mae": float(np.mean(np.abs(pred - true))),
      "mae_px": float(abs_px.mean()),
      "huber": huber(pred, true, huber_delta),
      "mean_point_error_px": float(point_errors(pred_px, true_px).mean()),
      "per_keypoint_mae_px": {n: float(v) for n, v in zip(names, abs_px.mean(axis=(0, 2)))},
  }
  if eye_slots is not None:
    nme = nme_per_image(pred_px, true_px, eye_slots)
    metrics["nme"] = float(nme.mean())
    for t in FAILURE_THRESHOLDS:
      metrics[f"failure_rate_{t:.2f}"] = failure_rate(nme, t)
    metrics[f"auc_{AUC_LIMIT:.2f}"] = auc(nme)
  return metrics


def gap_closed(model, baseline, floor, key):
  """Share of the gap from the mean-shape baseline down to the teacher floor that the model closed.

  None when there is no gap: no floor, or a floor not below the baseline.
  """
  if floor is None or key not in model or baseline[key] <= floor[key]:
    return None
  return float((baseline[key] - model[key]) / (baseline[key] - floor[key]))


# Predictions and test-time flip.

def predict(model, images, batch_size=64):
  """Model output on uint8-valued images, float32 normalised [N, K, 2]."""
  outputs = [np.asarray(model(tf.convert_to_tensor(images[i:i + batch_size]), training=False),
                        np.float32) for i in range(0, len(images), batch_size)]
  return np.concatenate(outputs)


def mirror_images(images):
  return np.asarray(images)[:, :, ::-1]


def unmirror_keypoints(keypoints, flip_permutation, width=1.0):
  """Points found on mirrored images, in the original images' frame and slots.

  Mirror slot j holds the original slot flip_permutation[j]; x -> width - x.
  """
  keypoints = np.array(keypoints, np.float64)
  keypoints[..., 0] = width - keypoints[..., 0]
  return keypoints[:, np.argsort(flip_permutation)]


def predict_flip_tta(model, images, flip_permutation, batch_size=64):
  """Mean of the prediction on each image and the mapped-back prediction on its mirror."""
  direct = predict(model, images, batch_size)
  mirrored = predict(model, mirror_images(images), batch_size)
  return (0.5 * (direct + unmirror_keypoints(mirrored, flip_permutation))).astype(np.float32)


# Yardsticks.

def _nearest_face(faces, target_px):
  """The detected face whose points lie nearest the target points, or None."""
  if not faces:
    return None
  return min(faces, key=lambda points: np.linalg.norm(points - target_px, axis=-1).mean())


def teacher_pairs(images, keypoints, schema):
  """MediaPipe's points on each image and on its mirror (mapped back), in pixels [M, K, 2].

  Where MediaPipe finds several faces, the one nearest the labelled face is taken, on the image
  and on its mirror alike. Returns (points, mirrored_points_mapped_back, kept) where kept
  indexes the M images on which the face was found both ways.
  """
  mesh = list(schema.mesh_indices)
  direct, back, kept = [], [], []
  with annotate.FaceMesh(max_faces=TEACHER_MAX_FACES) as face_mesh:
    for i, (image, label) in enumerate(zip(images, keypoints)):
      image = np.ascontiguousarray(image, np.uint8)
      width = image.shape[1]
      label_px = label * image.shape[1::-1]
      mirror_label_px = unmirror_keypoints(label_px[None], schema.flip_permutation, width)[0]
      found = _nearest_face(face_mesh.detect(image, mesh), label_px)
      found_mirror = _nearest_face(face_mesh.detect(image[:, ::-1], mesh), mirror_label_px)
      if (i + 1) % 1000 == 0:
        logging.info("teacher floor: %d / %d images annotated", i + 1, len(images))
      if found is None or found_mirror is None:
        continue
      direct.append(found)
      back.append(unmirror_keypoints(found_mirror[None], schema.flip_permutation, width)[0])
      kept.append(i)
  shape = (-1, len(mesh), 2)
  return (np.array(direct).reshape(shape), np.array(back).reshape(shape),
          np.array(kept, np.int64))


def teacher_floor(images, keypoints, schema, huber_delta):
  """Teacher floor metrics on these images and its per-image NME (None if no face was found)."""
  size = images.shape[1]
  direct, back, kept = teacher_pairs(images, keypoints, schema)
  left_out = len(images) - len(kept)
  if left_out:
    logging.warning("teacher floor: MediaPipe found no face on %d of %d images (or their "
                    "mirrors); they are left out of the floor", left_out, len(images))
  if not len(kept):
    return None, None
  floor = keypoint_metrics(back / size, direct / size, size, schema.names, schema.eye_slots,
                           huber_delta)
  floor["num_left_out"] = int(left_out)
  nme = (nme_per_image(back, direct, schema.eye_slots)
         if schema.eye_slots is not None else None)
  return floor, nme


# The perturbed protocol.

def perturb(images, keypoints, flip_permutation, batch_size=256):
  """The fixed perturbed copy of the faces: same seed, same warp, every run."""
  config = augment.make_config(**PERTURBATION)
  out_images, out_keypoints = [], []
  for i in range(0, len(images), batch_size):
    seed = tf.constant([PERTURBATION_SEED, i // batch_size], tf.int64)
    warped, moved = augment.augment_batch(
        tf.convert_to_tensor(images[i:i + batch_size]),
        tf.convert_to_tensor(keypoints[i:i + batch_size], tf.float32),
        config, seed, flip_permutation)
    out_images.append(np.clip(np.round(warped.numpy()), 0, 255).astype(np.uint8))
    out_keypoints.append(moved.numpy().astype(np.float32))
  return np.concatenate(out_images), np.concatenate(out_keypoints)


# One protocol, end to end.

def evaluate_protocol(model, images, keypoints, mean_shape, schema, *, tta_flip, huber_delta):
  """Metrics of the model, mean shape and teacher floor on one set of faces.

  Returns (metrics dict, per-image NME per predictor, model predictions).
  """
  size = images.shape[1]
  names, eyes = schema.names, schema.eye_slots
  pred = predict(model, images)
  baseline = np.broadcast_to(mean_shape, keypoints.shape)
  results = {
      "model": keypoint_metrics(pred, keypoints, size, names, eyes, huber_delta),
      "mean_shape": keypoint_metrics(baseline, keypoints, size, names, eyes, huber_delta),
  }
  nme = {}
  if eyes is not None:
    nme["model"] = nme_per_image(pred * size, keypoints * size, eyes)
    nme["mean shape"] = nme_per_image(baseline * size, keypoints * size, eyes)
  if tta_flip:
    tta = predict_flip_tta(model, images, schema.flip_permutation)
    results["model_flip_tta"] = keypoint_metrics(tta, keypoints, size, names, eyes, huber_delta)
    if eyes is not None:
      nme["model + flip TTA"] = nme_per_image(tta * size, keypoints * size, eyes)
  floor, floor_nme = teacher_floor(images, keypoints, schema, huber_delta)
  results["teacher_floor"] = floor
  if floor_nme is not None:
    nme["teacher floor"] = floor_nme
  for key in ("mae_px", "nme"):
    results[f"gap_closed_{key}"] = gap_closed(results["model"], results["mean_shape"], floor, key)
  return results, nme, pred


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
      f"facekp evaluation of {metrics['workdir']} on {metrics['split']} "
      f"({metrics['num_faces']} faces, {metrics['image_size']} px)",
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

def draw_pictures(picture_dir, arrays, pred, perturbed, pred_perturbed, nme, nme_perturbed,
                  names, history_path):
  tf.io.gfile.makedirs(picture_dir)
  size = arrays["images"].shape[1]
  first = slice(0, PICTURE_FACES)
  plots.face_grid(f"{picture_dir}/test_faces.png", arrays["images"][first],
                  arrays["keypoints"][first] * size, pred[first] * size, names,
                  captions=[str(n)[-24:] for n in arrays["image_names"][first]],
                  title="test faces: label (green, hollow) and prediction (red)")
  plots.face_grid(f"{picture_dir}/test_faces_perturbed.png", perturbed[0][first],
                  perturbed[1][first] * size, pred_perturbed[first] * size, names,
                  title="perturbed protocol: label (green, hollow) and prediction (red)")
  if "model" in nme:
    worst = np.argsort(-nme["model"])[:PICTURE_FACES]
    captions = [f"{str(arrays['image_names'][i])[-18:]} NME {100 * nme['model'][i]:.1f}%"
                for i in worst]
    plots.face_grid(f"{picture_dir}/worst_faces.png", arrays["images"][worst],
                    arrays["keypoints"][worst] * size, pred[worst] * size, names,
                    captions=captions,
                    title="worst test faces by NME: label (green, hollow), prediction (red)")
    plots.ced_curves(f"{picture_dir}/ced.png",
                     [("aligned test faces", nme), ("perturbed test faces", nme_perturbed)],
                     limit=AUC_LIMIT)
  if tf.io.gfile.exists(history_path):
    plots.training_curves(f"{picture_dir}/training_curves.png", plots.read_history(history_path))


# The workdir.

def evaluate_workdir(workdir, data_dir=None, split="test", *, tta_flip=False, pictures=True):
  """Evaluates workdir/model.keras on a split; writes metrics.json and pictures; returns metrics."""
  config = workdir_lib.read_config(workdir)
  data_dir = data_dir or config["data_dir"]
  image_size = int(config.get("image_size", 128))
  huber_delta = float(config.get("huber_delta", 1.0))
  schema = dataset.load_schema(data_dir)
  arrays = input_pipeline.load_arrays(data_dir, split, image_size=image_size)
  if not len(arrays["images"]):
    raise ValueError(f"the {split} split of {data_dir} is empty")
  model = workdir_lib.load_model(workdir)
  mean_shape = input_pipeline.train_mean_keypoints(data_dir)
  logging.info("evaluating %s on %d %s faces of %s", workdir, len(arrays["images"]), split,
               data_dir)

  aligned, nme, pred = evaluate_protocol(
      model, arrays["images"], arrays["keypoints"], mean_shape, schema,
      tta_flip=tta_flip, huber_delta=huber_delta)
  perturbed = perturb(arrays["images"], arrays["keypoints"], schema.flip_permutation)
  perturbed_results, nme_perturbed, pred_perturbed = evaluate_protocol(
      model, perturbed[0], perturbed[1], mean_shape, schema,
      tta_flip=tta_flip, huber_delta=huber_delta)
  perturbed_results["perturbation"] = dict(PERTURBATION, seed=PERTURBATION_SEED)

  thresholds = np.linspace(0.0, AUC_LIMIT, CED_POINTS)
  metrics = {
      "workdir": str(workdir), "data_dir": str(data_dir), "split": split,
      "num_faces": int(len(arrays["images"])), "image_size": image_size,
      "keypoint_names": list(schema.names), "huber_delta": huber_delta,
      "aligned": aligned, "perturbed": perturbed_results,
      "ced": {"thresholds": thresholds.tolist(),
              "aligned": {k: ced(v, thresholds).tolist() for k, v in nme.items()},
              "perturbed": {k: ced(v, thresholds).tolist() for k, v in nme_perturbed.items()}},
  }
  with tf.io.gfile.GFile(f"{workdir}/metrics.json", "w") as f:
    json.dump(metrics, f, indent=2)
  if pictures:
    draw_pictures(f"{workdir}/pictures", arrays, pred, perturbed, pred_perturbed, nme,
                  nme_perturbed, schema.names, f"{workdir}/history.csv")
  print(format_table(metrics), flush=True)
  return metrics


def define_flags():
  """Command-line flags, defined only when run as a program (train.py imports this module)."""
  cli.define_workdir("Training workdir (config.json, model.keras).")
  flags.DEFINE_string("data_dir", None, "Dataset directory; default: the workdir's config.")
  flags.DEFINE_string("split", "test", "Split to evaluate on.")
  flags.DEFINE_bool("tta_flip", False, "Also report test-time flip averaging.")
  flags.DEFINE_bool("pictures", True, "Draw pictures into workdir/pictures.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  evaluate_workdir(f.workdir, f.data_dir, f.split, tta_flip=f.tta_flip, pictures=f.pictures)


def run():
  """The facekp-evaluate command (python -m facekp.evaluate)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
