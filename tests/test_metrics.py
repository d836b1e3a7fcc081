"""Tests for facekp.eval.metrics: every figure against hand-computed values."""
import numpy as np
import pytest

from facekp.core import schema as schema_lib
from facekp.eval import metrics

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
EYES = SCHEMA.eye_slots  # (1, 3)


def faces_with_known_nme():
  """Three faces, pixels: inter-ocular distances 10, 20, 10; NME 0.12, 0.02, 0.06."""
  true = np.zeros((3, 5, 2))
  true[0, 3] = (10, 0)
  true[1, 3] = (20, 0)
  true[2, 3] = (10, 0)
  pred = true.copy()
  pred[0, 0] += (0, 6)   # error 6 on one of 5 points: mean 1.2, / 10
  pred[1, 2] += (0, 2)   # mean 0.4, / 20
  pred[2, 4] += (3, 0)   # mean 0.6, / 10
  return pred, true


def test_nme_failure_rate_ced_auc_by_hand():
  pred, true = faces_with_known_nme()
  nme = metrics.nme_per_image(pred, true, EYES)
  np.testing.assert_allclose(nme, [0.12, 0.02, 0.06])
  assert metrics.failure_rate(nme, 0.10) == pytest.approx(1 / 3)
  assert metrics.failure_rate(nme, 0.05) == pytest.approx(2 / 3)
  np.testing.assert_allclose(metrics.ced(nme, [0, 0.02, 0.05, 0.10, 0.12]),
                             [0, 1 / 3, 1 / 3, 2 / 3, 1])
  # AUC to 0.10: faces contribute 1 - nme / 0.1 clipped at 0: (0 + 0.8 + 0.4) / 3.
  assert metrics.auc(nme) == pytest.approx(0.4)
  thresholds = np.linspace(0, 0.1, 100001)
  assert np.trapz(metrics.ced(nme, thresholds), thresholds) / 0.1 == pytest.approx(0.4, abs=1e-4)


def test_nme_rejects_faces_without_eye_distance():
  true = np.zeros((1, 5, 2))
  with pytest.raises(ValueError, match="eye corners"):
    metrics.nme_per_image(true + 1, true, EYES)


def test_huber_and_keypoint_metrics_by_hand():
  assert metrics.huber([0.5, 2.0], [0.0, 0.0], delta=1.0) == pytest.approx((0.125 + 1.5) / 2)
  pred, true = faces_with_known_nme()
  m = metrics.keypoint_metrics(pred / 100, true / 100, 100, SCHEMA.names, EYES)
  # Absolute coordinate errors: 6, 2 and 3 px among 3 faces * 5 points * 2 axes.
  assert m["mae_px"] == pytest.approx(11 / 30)
  assert m["mae"] == pytest.approx(11 / 30 / 100)
  assert m["mean_point_error_px"] == pytest.approx(11 / 15)
  assert m["nme"] == pytest.approx((0.12 + 0.02 + 0.06) / 3)
  assert m["failure_rate_0.10"] == pytest.approx(1 / 3)
  assert m["auc_0.10"] == pytest.approx(0.4)
  assert m["per_keypoint_mae_px"] == pytest.approx(
      {"nose_tip": 1.0, "right_eye_outer": 0.0, "right_mouth_corner": 1 / 3,
       "left_eye_outer": 0.0, "left_mouth_corner": 0.5})
  assert "nme" not in metrics.keypoint_metrics(pred / 100, true / 100, 100, SCHEMA.names, None)


def test_gap_closed():
  assert metrics.gap_closed({"nme": 0.03}, {"nme": 0.05}, {"nme": 0.01}, "nme") == \
      pytest.approx(0.5)
  assert metrics.gap_closed({"nme": 0.03}, {"nme": 0.05}, None, "nme") is None
  assert metrics.gap_closed({"nme": 0.03}, {"nme": 0.05}, {"nme": 0.06}, "nme") is None
