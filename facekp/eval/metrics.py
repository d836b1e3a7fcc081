"""Keypoint metrics, pure NumPy: the seed's MAE and Huber, the field's NME, FR, CED and AUC.

Points are [N, K, 2] arrays (x, y). `point_errors`, `nme_per_image` and the NME-based figures
take pixels of the faces' images; `keypoint_metrics` takes normalised points and the image size.
NME divides a face's mean point error by its labelled inter-ocular distance (the outer eye
corners, facekp.core.schema.Schema.eye_slots), as 300W, WFLW and COFW report it.
"""
import numpy as np

from facekp.core import keypoints as keypoints_lib

FAILURE_THRESHOLDS = (0.10, 0.05)
AUC_LIMIT = 0.10


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
  pred_px = keypoints_lib.to_pixels(pred, image_size)
  true_px = keypoints_lib.to_pixels(true, image_size)
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
    metrics.update(nme_metrics(nme_per_image(pred_px, true_px, eye_slots)))
  return metrics


def nme_metrics(nme):
  """Mean NME, failure rates and AUC of per-face NMEs."""
  metrics = {"nme": float(np.mean(nme))}
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
