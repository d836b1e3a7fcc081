"""Tests for facekp.serve.export: SavedModel and TFLite exports agree with the Keras model."""
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from facekp.core import files
from facekp.core import keypoints as keypoints_lib
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.serve import export
from facekp.serve import loading
from facekp.serve import model_card
from facekp.serve import predict

SIZE = 32


def tiny_trained_model():
  """A small conv net fitted for a few steps on random faces (enough weights to quantise)."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((SIZE, SIZE, 3))
  x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
  x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(10, activation="sigmoid")(x)
  model = keras.Model(inputs, keras.layers.Reshape((5, 2))(x))
  model.compile(optimizer="adam", loss="huber")
  rng = np.random.default_rng(0)
  model.fit(rng.integers(0, 256, (32, SIZE, SIZE, 3)).astype(np.float32),
            rng.uniform(0.2, 0.8, (32, 5, 2)).astype(np.float32), epochs=2, verbose=0)
  return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("workdir")
  tiny_trained_model().save(workdir / "model.keras")
  (workdir / "config.json").write_text(
      json.dumps({"data_dir": str(workdir / "no_dataset"), "image_size": SIZE}))
  return workdir, export.export_workdir(str(workdir), repeats=2)


def test_exports_are_written_and_match_keras(exported):
  workdir, report = exported
  for name in ("saved_model/saved_model.pb", "model_float32.tflite",
               "model_dynamic_range.tflite", "model_float16.tflite", "export_report.json"):
    assert (workdir / "export" / name).exists(), name
  assert report["images"] == "facekp/sample photos"
  models = report["models"]
  assert set(models) == {"keras", "saved_model", "tflite_float32", "tflite_dynamic_range",
                         "tflite_float16"}
  assert models["keras"]["max_abs_diff_px"] == 0
  assert models["saved_model"]["max_abs_diff_px"] < 1e-3
  assert models["tflite_float32"]["max_abs_diff_px"] < 1e-3
  assert models["tflite_float16"]["max_abs_diff_px"] < 0.01
  assert models["tflite_dynamic_range"]["max_abs_diff_px"] < 0.1
  # Quantised weights take less room.
  assert models["tflite_dynamic_range"]["size_bytes"] < models["tflite_float32"]["size_bytes"]
  assert all(m["latency_ms"] > 0 for m in models.values())
  assert json.loads((workdir / "export" / "export_report.json").read_text()) == report


def test_export_records_the_keypoint_convention_crop_and_input_size(exported):
  workdir, report = exported
  expected = {**keypoints_lib.metadata(export.UNKNOWN_CROP, SIZE),  # no dataset: crop unknown
              "flip_tta": False}
  assert report["keypoints"] == expected
  assert json.loads((workdir / "export" / export.KEYPOINTS_FILE).read_text()) == expected
  assert expected["coordinates"] == keypoints_lib.CONVENTION and expected["input_size"] == SIZE
  assert not [p for p in (workdir / "export").iterdir() if p.name.startswith(".tmp")]


def test_tta_flip_bakes_a_mirror_symmetric_average_into_every_export(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  schema = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
  schema.save(str(data_dir / "schema.json"))
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  tiny_trained_model().save(workdir / "model.keras")
  (workdir / "config.json").write_text(json.dumps({"data_dir": str(data_dir), "image_size": SIZE}))
  (tmp_path / "none").mkdir()  # a folder without schema.json
  with pytest.raises(ValueError, match="--tta_flip needs the flip permutation"):
    export.export_workdir(str(workdir), data_dir=str(tmp_path / "none"), tta_flip=True)
  report = export.export_workdir(str(workdir), variants=("float32",), repeats=1, tta_flip=True)
  assert report["keypoints"]["flip_tta"] is True
  assert report["models"]["tflite_float32"]["max_abs_diff_px"] < 1e-3
  faces = sample.sample_faces(SIZE)
  plain = loading.load(str(workdir / "model.keras"))
  for path in ("saved_model", "model_float32.tflite"):
    tta = loading.load(str(workdir / "export" / path))
    direct, mirrored = tta(faces), tta(np.ascontiguousarray(faces[:, :, ::-1]))
    # The average of a face and its mirror is the same face, seen from either side...
    np.testing.assert_allclose(keypoints_lib.mirror(mirrored, schema.flip_permutation), direct,
                               atol=1e-4)
    # ...and not the model on the face alone (its points are not symmetric).
    assert np.abs(direct - plain(faces)).max() > 1e-3


def test_a_second_export_replaces_the_first_whole(tmp_path):
  """export, then export --tta_flip --tflite=float32: no variant of the first is left beside
  the second's keypoints.json, and the report lists exactly the files there."""
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61)).save(
      str(data_dir / "schema.json"))
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  tiny_trained_model().save(workdir / "model.keras")
  (workdir / "config.json").write_text(json.dumps({"data_dir": str(data_dir), "image_size": SIZE}))
  out = workdir / "export"
  first = export.export_workdir(str(workdir), repeats=1)
  assert sorted(first["files"]) == sorted(p.name for p in out.iterdir())
  assert {"model_float16.tflite", "model_dynamic_range.tflite"} <= set(first["files"])
  second = export.export_workdir(str(workdir), variants=("float32",), repeats=1, tta_flip=True)
  assert sorted(p.name for p in out.iterdir()) == sorted(second["files"]) == [
      "README.md", "export_report.json", "keypoints.json", "model_card.json",
      "model_float32.tflite", "saved_model", "schema.json"]
  assert set(second["models"]) == {"keras", "saved_model", "tflite_float32"}
  assert second["models"]["tflite_float32"]["path"] == f"{out}/model_float32.tflite"
  assert json.loads((out / "export_report.json").read_text()) == second
  assert json.loads((out / export.KEYPOINTS_FILE).read_text())["flip_tta"] is True
  assert [p.name for p in workdir.iterdir() if files.is_temporary(p.name)] == []
  # What predict loads from the folder is the second export: the flip-averaged model.
  faces = sample.sample_faces(SIZE)
  tta = loading.load(str(out / "model_float32.tflite"))
  np.testing.assert_allclose(
      tta(faces), loading.load(str(out / "saved_model"))(faces), atol=1e-4)
  assert np.abs(tta(faces) - loading.load(str(workdir / "model.keras"))(faces)).max() > 1e-3


def test_the_crop_method_comes_from_the_dataset(tmp_path):
  assert export.dataset_crop(str(tmp_path)) == export.UNKNOWN_CROP
  (tmp_path / "schema.json").write_text(json.dumps({"mesh_indices": [1]}))
  assert export.dataset_crop(str(tmp_path)) == export.UNKNOWN_CROP
  crop = keypoints_lib.crop_method(128)
  (tmp_path / "schema.json").write_text(json.dumps({"keypoints": keypoints_lib.metadata(crop)}))
  assert export.dataset_crop(str(tmp_path)) == crop == "facekp_align_128"
  (tmp_path / "schema.json").write_text(json.dumps({"keypoints": keypoints_lib.CROP_AS_STORED}))
  assert export.dataset_crop(str(tmp_path)) == keypoints_lib.CROP_AS_STORED


def test_saved_model_signature_takes_uint8_and_returns_pixels(exported):
  workdir, _ = exported
  signature = tf.saved_model.load(str(workdir / "export/saved_model")).signatures[
      "serving_default"]
  images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
  out = signature(images=tf.constant(images))
  assert set(out) == {"keypoints", "keypoints_px"}
  assert out["keypoints"].shape == (3, 5, 2)
  np.testing.assert_allclose(out["keypoints_px"], out["keypoints"] * SIZE, rtol=1e-6)


@pytest.mark.parametrize(
    "name", ["model.keras", "export/saved_model", "export/model_float32.tflite", "."])
def test_load_reads_every_format(exported, name):
  workdir, _ = exported
  model = loading.load(str(workdir / name))
  assert model.image_size == SIZE
  images = np.zeros((2, SIZE, SIZE, 3), np.uint8)
  assert model(images).shape == (2, 5, 2)
  with pytest.raises(ValueError, match="takes images of shape"):
    model(np.zeros((1, SIZE + 1, SIZE, 3), np.uint8))


def test_load_rejects_what_is_not_a_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a keypoint model"):
    loading.load(str(tmp_path))


def test_every_export_has_a_model_card(exported):
  workdir, report = exported
  out = workdir / "export"
  card = json.loads((out / model_card.CARD_FILE).read_text())
  assert report["model_card"] == f"{out}/{model_card.CARD_FILE}"
  assert all(os.path.exists(out / name.rstrip("/")) for name in card["files"])
  assert card["keypoints"] == report["keypoints"] and card["input"]["input_size"] == SIZE
  # No dataset at hand, no evaluation, no recorded config: the card says so.
  assert card["schema"] is None and card["landmarks"] is None
  assert card["training_data"]["faces"] is None
  assert card["training_data"]["data_dir"] == str(workdir / "no_dataset")
  assert card["accuracy"] == model_card.NOT_EVALUATED
  training = card["training"]
  assert training["config_file_source"].startswith("not recorded")
  assert training["command"].startswith(f"python -m facekp.main --config={training['config_file']}"
                                        f" --workdir={workdir} --config.data_dir={workdir}/no_")
  readme = (out / model_card.README_FILE).read_text()
  assert "Not evaluated" in readme and "the dataset's schema.json was not at hand" in readme
  assert training["command"] in readme


def test_predict_reads_its_checks_from_the_model_card_first(exported, tmp_path):
  workdir, _ = exported
  out = tmp_path / "export"
  shutil.copytree(workdir / "export", out)
  assert predict.load_checked_model(str(out)).names == tuple(f"point_{k}" for k in range(1, 6))
  card = json.loads((out / model_card.CARD_FILE).read_text())
  schema = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
  card["schema"] = schema.to_dict()
  (out / model_card.CARD_FILE).write_text(json.dumps(card))
  assert predict.load_checked_model(str(out / "model_float32.tflite")).names == schema.names
  # export_report.json still records the model's own convention and size: the card wins.
  for keypoints, message in (
      ({"coordinates": "pixel_centres"}, "model_card.json: the model was trained on "
                                         "'pixel_centres' keypoint coordinates"),
      ({"input_size": 2 * SIZE}, f"records an input size of {2 * SIZE} px, but the model takes "
                                 f"{SIZE} px")):
    (out / model_card.CARD_FILE).write_text(json.dumps(
        dict(card, keypoints=dict(card["keypoints"], **keypoints))))
    for model in ("", "saved_model", "model_float32.tflite"):
      with pytest.raises(ValueError, match=message):
        predict.load_checked_model(str(out / model))
  (out / model_card.CARD_FILE).unlink()
  predict.load_checked_model(str(out))  # back to export_report.json
