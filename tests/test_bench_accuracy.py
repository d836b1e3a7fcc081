"""bench_accuracy's protocol: folds that keep copies together, its figures and table, and the
whole-photo protocol on the sample, end to end."""
import glob
import json
import os
import subprocess
import sys
import types

import numpy as np

from facekp.core import keypoint_csv
from facekp.core import schema as schema_lib
from facekp.data import splits
from facekp.input import input_pipeline
from facekp.train import default_config
from tools import bench_accuracy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
FACE = np.array([[0.5, 0.6], [0.33, 0.45], [0.38, 0.75], [0.67, 0.45], [0.62, 0.75]])


def test_groups_join_faces_of_one_photo_copies_and_identical_pixels():
  names = ["a/p1_f0.png", "a/p1_f1.png", "a/p2_f0.png", "b/x.png", "b/y.png", "b/z.png"]
  keys = ["p1", "p1", "p2", "x", "y", "z"]
  images = np.zeros((6, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0] = [1, 2, 3, 4, 5, 3]  # z is a pixel copy of p2_f0
  linked = [["b/x.png", "b/y.png", "not/there.png"]]  # make_tfrecords' duplicates.json
  groups = bench_accuracy.merge_groups(
      keys, linked + bench_accuracy.identical_pixels(images, names), names)
  assert groups[0] == groups[1] and groups[2] == groups[5] and groups[3] == groups[4]
  assert len(set(groups.tolist())) == 3


def test_folds_keep_every_group_in_one_fold_and_balance_the_faces():
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(40), rng.integers(1, 6, 40))
  folds = bench_accuracy.assign_folds(groups, 5)
  for g in np.unique(groups):
    assert len(set(folds[groups == g].tolist())) == 1
  counts = np.bincount(folds)
  assert counts.max() - counts.min() <= 5  # within one group of the largest size
  np.testing.assert_array_equal(bench_accuracy.assign_folds(groups, 5), folds)  # fixed
  train, validation, test = bench_accuracy.split_fold(groups, folds, 2)
  assert set(np.flatnonzero(folds == 2)) == set(test)
  assert len(validation) and len(train) and not set(groups[validation]) & set(groups[train])
  assert len(train) + len(validation) + len(test) == len(groups)


def test_ridge_on_features_recovers_a_linear_map_and_picks_a_small_alpha():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(80, 30))
  keypoints = (features @ rng.normal(size=(30, 10)) * 0.01 + FACE.ravel()).reshape(80, 5, 2)
  predict, alpha = bench_accuracy.hog_ridge(features, keypoints, np.arange(60), np.arange(60, 70))
  np.testing.assert_allclose(predict(features[70:]), keypoints[70:], atol=2e-3)
  assert alpha <= 0.01


def test_a_learned_offset_in_the_eye_frame_follows_a_turned_face():
  eyes = np.array([[[40.0, 50.0], [80.0, 50.0]], [[50.0, 40.0], [50.0, 80.0]]])  # 2nd turned 90
  uv = np.array([[[0.0, 0.3], [-0.5, 0.0], [-0.3, 0.7], [0.5, 0.0], [0.3, 0.7]]] * 2)
  points = bench_accuracy.from_face_frame(uv, eyes)
  np.testing.assert_allclose(points[1, 0], [50 - 0.3 * 40, 60.0])  # below is image-left now
  np.testing.assert_allclose(bench_accuracy.to_face_frame(points, eyes), uv, atol=1e-12)
  shifted = bench_accuracy.from_face_frame(uv + [0.0, 0.1], eyes)
  offset = bench_accuracy.learned_offset(points, eyes, shifted, np.arange(2))
  np.testing.assert_allclose(offset, np.broadcast_to([0.0, 0.1], (5, 2)), atol=1e-12)


def test_fold_scores_and_the_table_read_against_both_yardsticks():
  class Faces:  # the fields fold_scores reads
    images = np.zeros((4, 128, 128, 3), np.uint8)
    keypoints = np.broadcast_to(FACE, (4, 5, 2)) + np.linspace(-0.02, 0.02, 4)[:, None, None]
    schema = SCHEMA
  faces, test = Faces(), np.array([1, 2, 3])
  truth = faces.keypoints[test]
  floor_pairs = (truth * 128 + 0.5, truth * 128, np.array([1, 2, 3]))  # floor: 0.5 px
  predictions = {"mean shape": (np.broadcast_to(FACE, truth.shape),) * 2,
                 "halfway": ((truth + FACE) / 2, truth)}
  scores = bench_accuracy.fold_scores(predictions, faces, faces.keypoints, (floor_pairs,) * 2,
                                      test)
  assert scores["teacher floor"]["mae_px"] == 0.5 and scores["teacher floor"]["gap_closed"] == 1
  assert scores["mean shape"]["gap_closed"] == 0 and scores["halfway"]["perturbed_nme"] == 0
  expected = (scores["mean shape"]["nme"] - scores["halfway"]["nme"]) / (
      scores["mean shape"]["nme"] - scores["teacher floor"]["nme"])
  np.testing.assert_allclose(scores["halfway"]["gap_closed"], expected)
  summary = bench_accuracy.summarise([scores, scores])
  assert summary["halfway"]["mae_px"][1] == 0.0 and summary["halfway"]["mae_px"][2] == 2
  table = bench_accuracy.format_table(summary)
  assert table.splitlines()[0].split()[:3] == ["predictor", "MAE", "px"]
  assert "halfway" in table and f"{100 * expected:.0f}% ± 0%" in table

  # Two recipes, each protocol averaged on its own: the truth and the mean face make "halfway".
  mean_face = predictions["mean shape"][0]
  recipes = {"a": (truth, mean_face), "a + flip TTA": (truth, truth),
             "b": (mean_face, truth), "b + flip TTA": (mean_face, mean_face)}
  averaged = bench_accuracy.ensemble(recipes, ["a", "b"])
  assert sorted(averaged) == ["ensemble of 2 recipes", "ensemble of 2 recipes + flip TTA"]
  for protocol in averaged.values():
    for points in protocol:
      np.testing.assert_allclose(points, predictions["halfway"][0])


def test_each_face_finds_its_photo_by_its_row_or_the_crops_index(tmp_path):
  raw, crops = tmp_path / "raw", tmp_path / "aligned128"
  (raw / "pkg").mkdir(parents=True)
  crops.mkdir()
  for name in ("a.jpg", "b.jpg"):
    (raw / "pkg" / name).write_bytes(b"")
  (crops / "index.csv").write_text("crop,photo,face,quad_px\nc_f0.png,pkg/b.jpg,0,90.0\n"
                                   "gone_f0.png,pkg/gone.jpg,0,90.0\n")
  row = lambda name, photo: keypoint_csv.KeypointRow(name, 128, 128, (0.0,) * 10, "ok", photo)
  faces = types.SimpleNamespace(
      names=["raw/pkg/a_f0.png", "raw/pkg/a_f1.png", "aligned128/c_f0.png",
             "aligned128/gone_f0.png", "aligned128/other.png"],
      rows=[row("pkg/a_f0.png", "pkg/a.jpg"), row("pkg/a_f1.png", "pkg/a.jpg"),
            row("c_f0.png", "c_f0.png"), row("gone_f0.png", "gone_f0.png"),
            row("other.png", None)])
  sources = [("aligned128", str(crops), 0), ("raw", str(raw), 128)]
  assert bench_accuracy.face_photos(faces, sources, str(raw)) == [
      f"{raw}/pkg/a.jpg", f"{raw}/pkg/a.jpg", f"{raw}/pkg/b.jpg", None, None]


def test_the_table_puts_the_photo_rows_under_their_own_header():
  figures = {"nme": (0.03, 0.0, 2), "mae_px": (0.8, 0.1, 2)}
  photo = {"faces_found": (0.9, 0.05, 2), "nme": (0.033, 0.001, 2), "nme_ratio": (1.1, 0.1, 2)}
  table = bench_accuracy.format_table({"model.py": figures, "photos: model.py": photo})
  aligned, photos = table.split("\n\n")
  assert "photos:" not in aligned and "faces found" not in aligned
  header, row = photos.splitlines()[1:]
  assert header.split()[:3] == ["predictor", "faces", "found"] and "photo/crop NME" in header
  assert row.split()[:6] == ["photos:", "model.py", "90.0%", "±", "5.0%", "3.30%"]
  assert "1.10 ± 0.10" in row


TINY_128 = '''from facekp.configs import tiny


def get_config():
  config = tiny.get_config()
  config.image_size = 128  # the bench feeds its 128 px faces to the model as they are
  return config
'''


def test_quick_run_scores_the_sample_photos_end_to_end(tmp_path):
  """--quick on facekp/sample (--shared absent), one fold: the photo protocol runs facekp.load's
  predict on the test fold's photos and scores it, beside dlib when installed; the recipe also
  trains on a re-crop of each training face (--recrops=1), none of a test face's."""
  recipe = tmp_path / "tiny128.py"
  recipe.write_text(TINY_128)
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "tools.bench_accuracy", "--quick", "--only_folds=1",
       f"--shared={tmp_path}/absent", f"--recipes={recipe}", f"--cache={tmp_path}/cache",
       f"--json={out}", "--recrops=1"], cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "whole photos" in result.stdout and "photos: tiny128.py" in result.stdout
  report = json.loads(out.read_text())
  assert report["notes"]["photos_per_fold"][0] > 0
  fold_data, = glob.glob(f"{tmp_path}/cache/folds/*")
  names = {split: input_pipeline.load_arrays(fold_data, split)["image_names"].tolist()
           for split in ("train", "test")}
  recrops = [n for n in names["train"] if splits.is_recrop(n)]
  assert report["notes"]["recrops_trained_on"] == [len(recrops)] and recrops
  assert {splits.group_key(n.split("/", 1)[1]) for n in recrops} <= {
      splits.group_key(n.split("/", 1)[1]) for n in names["train"] if not splits.is_recrop(n)}
  assert not any(splits.is_recrop(n) for n in names["test"])
  rows = ["photos: tiny128.py"] + (
      [] if bench_accuracy.dlib_available() else [f"photos: {bench_accuracy.DLIB_OFFSET}"])
  for name in rows:
    fold = report["per_fold"][0][name]
    assert fold["num_faces"] > 0 and fold["num_found"] > 0, fold
    assert 0 < fold["nme"] < 0.5 and np.isfinite(fold["mae_px"]), fold  # a mean face at worst
    assert 0.5 < fold["nme_ratio"] < 3 and np.isfinite(fold["common_nme"]), fold
    assert report["summary"][name]["faces_found"][0] > 0


def test_a_recipes_runs_keep_their_name_when_facekp_adds_a_field_at_its_default(monkeypatch):
  config = bench_accuracy.load_config("few_faces", {})
  tag = bench_accuracy.recipe_tag("dir/few_faces.py", config)
  assert tag.startswith("few_faces-")
  original = default_config.get_config

  def with_a_new_field():  # facekp gains a field: its default config and every recipe have it
    defaults = original()
    defaults.new_field = 0.5
    return defaults
  monkeypatch.setattr(default_config, "get_config", with_a_new_field)
  config.new_field = 0.5
  assert bench_accuracy.recipe_tag("dir/few_faces.py", config) == tag
  config.new_field = 0.7  # a recipe that sets it trains other runs
  assert bench_accuracy.recipe_tag("dir/few_faces.py", config) != tag
  config.new_field = 0.5
  config.num_epochs += 1
  assert bench_accuracy.recipe_tag("dir/few_faces.py", config) != tag
