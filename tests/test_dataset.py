"""facekp.core.keypoint_csv, facekp.data.cleaning, facekp.data.splits and facekp.data.shards: the keypoint CSV,
cleaning, the hash split, the TFDS round trip and its metadata."""
import contextlib
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image
from PIL import PngImagePlugin
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from facekp.core import dataset_info
from facekp.core import images
from facekp.core import keypoint_csv
from facekp.core import keypoints
from facekp.data import cleaning
from facekp.data import png
from facekp.data import shards
from facekp.data import splits as splits_lib
from facekp.input import input_pipeline
from conftest import encode, user_csv


def row(name, points=None, width=40, height=30, status="ok"):
  points = points if points is not None else [5.5, 6.25] * 5
  return keypoint_csv.KeypointRow(name, width, height, tuple(float(v) for v in points), status)


def test_csv_round_trip_is_exact(tmp_path, default_schema):
  rows = [row("a,b.png", [1 / 3, 2.0, 1e-7, 3.5, 4, 5, 6, 7, 8, 9]),
          keypoint_csv.missing_row("sub/c.jpg", 5, "no_face", 10, 20)]
  path = str(tmp_path / "k.csv")
  keypoint_csv.write_keypoints_csv(path, rows, default_schema)
  assert open(path).readline().strip() == ",".join(keypoint_csv.csv_header(default_schema))
  assert keypoint_csv.read_keypoints_csv(path, default_schema) == rows


def test_reading_a_csv_names_missing_columns_and_bad_values(tmp_path, default_schema):
  path = tmp_path / "k.csv"
  path.write_text("image_name,point_1_x,point_1_y,point_2_x\na.png,1,2,3\n")
  with pytest.raises(ValueError, match="missing required column.*point_2_y, point_3_x"):
    keypoint_csv.read_keypoints_csv(str(path), default_schema)
  header = ",".join(("image_name",) + default_schema.csv_point_columns)
  path.write_text(header + ",point_6_x\n")
  with pytest.raises(ValueError, match="point_6_x go beyond the 5 keypoints"):
    keypoint_csv.read_keypoints_csv(str(path), default_schema)
  path.write_text(header + "\na.png,1,2,3,4,5,6,7,8,9,ten\n")
  with pytest.raises(ValueError, match="line 2, column point_5_y: 'ten' is not a number"):
    keypoint_csv.read_keypoints_csv(str(path), default_schema)


def test_seed_format_csv_gets_sizes_from_the_images(tmp_path, default_schema):
  folder = tmp_path / "imgs"
  folder.mkdir()
  (folder / "a.png").write_bytes(encode(np.zeros((30, 40, 3), np.uint8), "PNG"))
  path = user_csv(tmp_path / "seed.csv", default_schema, ["a.png," + ",".join(["5"] * 10)])
  (only,) = keypoint_csv.read_keypoints_csv(str(path), default_schema)
  assert (only.width, only.height, only.status) == (None, None, "ok")
  kept, report = cleaning.clean([only], str(folder))
  assert report["kept"] == 1 and (kept[0].width, kept[0].height) == (40, 30)


def test_clean_counts_every_reason(tmp_path):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for name in ["ok.png", "dup.png", "clash.png", "nopts.png", "out.png", "small.png"]:
    (folder / name).write_bytes(encode(np.zeros((30, 40, 3), np.uint8), "PNG"))
  (folder / "broken.png").write_bytes(b"junk")
  rows = [row("ok.png"), row("dup.png"), row("dup.png"), row("clash.png"),
          row("clash.png", [1.0] * 10), keypoint_csv.missing_row("nopts.png", 5, "no_face", 40, 30),
          row("half.png", [-1.0, -1.0] + [5.0] * 8, status="ok"),
          row("gone.png"), row("broken.png"), row("small.png", width=80),
          row("out.png", [41.0, 5.0] + [5.0] * 8)]
  kept, report = cleaning.clean(rows, str(folder))
  assert [r.image_name for r in kept] == ["ok.png", "dup.png"]
  assert report == {
      "rows": 11, "kept": 2,
      "dropped": {"duplicate_name": 3, "missing_keypoints": 2, "missing_file": 1,
                  "unreadable_file": 1, "size_mismatch": 1, "outside_image": 1},
      "missing_keypoints_by_status": {"no_face": 1, cleaning.BLANK_POINTS: 1}}
  cleaning.write_report(str(tmp_path / "r.json"), report)
  assert json.load(open(tmp_path / "r.json")) == report


def test_group_key_joins_the_faces_of_a_photo():
  assert splits_lib.group_key("a/photo_f3.png") == "a/photo"
  assert splits_lib.group_key("a/photo_f3_f12.png") == "a/photo_f3"
  assert splits_lib.group_key("a/photo.jpg") == "a/photo"
  assert splits_lib.group_key("f1.png") == "f1"


def test_split_is_stable_when_images_are_added_and_keeps_photos_together():
  fractions = splits_lib.parse_fractions("0.8,0.1,0.1")
  names = [f"dir/img{i:05d}.png" for i in range(3000)]
  before = {r.image_name: split for split, rows in
            splits_lib.assign_splits([row(n) for n in names[:2000]], fractions).items()
            for r in rows}
  after = {r.image_name: split for split, rows in
           splits_lib.assign_splits([row(n) for n in names], fractions).items() for r in rows}
  assert all(after[n] == before[n] for n in before)
  shares = [list(after.values()).count(s) / len(after) for s in splits_lib.SPLITS]
  np.testing.assert_allclose(shares, fractions, atol=0.025)
  faces = [f"group/photo{i}_f{k}.png" for i in range(50) for k in range(4)]
  for i in range(50):
    assert len({splits_lib.split_of(f"group/photo{i}_f{k}.png", fractions) for k in range(4)}) == 1
  assert {splits_lib.split_of(n, (1.0, 0.0, 0.0)) for n in faces} == {"train"}


def test_parse_fractions_rejects_bad_input():
  assert splits_lib.parse_fractions("1,0,0") == (1.0, 0.0, 0.0)
  for bad in ["0.8,0.1", "0.5,0.5,0.5", "a,b,c", "1.2,-0.1,-0.1"]:
    with pytest.raises(ValueError, match="--split"):
      splits_lib.parse_fractions(bad)


def test_stored_bytes_are_kept_only_when_tensorflow_decodes_them_exactly(astronaut):
  png = encode(astronaut, "PNG")
  assert shards.storable_image_bytes(png, images.decode_rgb(png)) is png
  rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 100, np.uint8)])
  for data in [encode(rgba, "PNG"), encode(astronaut, "JPEG"), encode(astronaut, "WEBP")]:
    rgb = images.decode_rgb(data)
    stored = shards.storable_image_bytes(data, rgb)
    np.testing.assert_array_equal(
        tf.io.decode_image(stored, channels=3, expand_animations=False).numpy(), rgb)


def with_chunk(png, kind, payload):
  """PNG bytes with one more chunk right after IHDR."""
  chunk = struct.pack(">I", len(payload)) + kind + payload
  chunk += struct.pack(">I", zlib.crc32(kind + payload))
  return png[:33] + chunk + png[33:]


def _exif_rotated():
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90
  return exif.tobytes()


def test_plain_rgb_pngs_are_kept_without_a_decode_and_the_others_checked(astronaut):
  import cv2  # pylint: disable=g-import-not-at-top
  text = PngImagePlugin.PngInfo()
  text.add_text("Comment", "a face")
  xmp = PngImagePlugin.PngInfo()
  xmp.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
               "</x:xmpmeta>")
  plain = encode(astronaut, "PNG")
  pngs = {  # name: (bytes, whether plain)
      "pillow": (plain, True),
      "text chunk": (encode(astronaut, "PNG", pnginfo=text), False),
      "xmp orientation": (encode(astronaut, "PNG", pnginfo=xmp), False),
      "opencv": (images.encode_png(astronaut), True),
      "gray": (encode(astronaut[:, :, 0], "PNG"), False),
      "palette": (encode(Image.fromarray(astronaut).quantize(64), "PNG"), False),
      "rgba": (encode(np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)]),
                      "PNG"), False),
      "transparent colour": (encode(astronaut, "PNG", transparency=(0, 0, 0)), False),
      "16 bit": (cv2.imencode(".png", astronaut.astype(np.uint16) * 257)[1].tobytes(), False),
      "gamma": (with_chunk(plain, b"gAMA", struct.pack(">I", 45455)), False),
      "orientation": (with_chunk(plain, b"eXIf", _exif_rotated()), False),
  }
  for name, (data, plain_rgb) in pngs.items():
    assert png.is_plain_rgb_png(data) == plain_rgb, name
    rgb = images.decode_rgb(data)
    stored = shards.storable_image_bytes(data, rgb)
    assert (stored is data) or not plain_rgb, name
    np.testing.assert_array_equal(
        tf.io.decode_image(stored, channels=3, expand_animations=False).numpy(), rgb, name)
  np.testing.assert_array_equal(images.decode_rgb(pngs["orientation"][0]),
                                np.rot90(astronaut, -1))  # the orientation was applied
  assert not png.is_plain_rgb_png(plain[:-12])  # no IEND: cut short


def test_an_image_unchanged_since_cleaning_is_stored_without_a_second_decode(
    tmp_path, astronaut, monkeypatch):
  from facekp.data import dedup  # pylint: disable=g-import-not-at-top
  path = tmp_path / "face.png"
  path.write_bytes(encode(astronaut, "PNG"))
  height, width = astronaut.shape[:2]
  face = row("face.png", width=width, height=height)
  _, fingerprint = cleaning.read_image(str(path))  # what cleaning read
  decoded = shards.make_example(str(tmp_path), face)
  real_decode = images.decode_rgb

  def no_decode(*args):
    raise AssertionError("decoded again")

  monkeypatch.setattr(images, "decode_rgb", no_decode)
  kept = shards.make_example(str(tmp_path), face, fingerprint[0])
  assert kept["image"] == decoded["image"] == path.read_bytes()
  assert {k: str(v) for k, v in kept.items()} == {k: str(v) for k, v in decoded.items()}
  monkeypatch.setattr(images, "decode_rgb", real_decode)
  path.write_bytes(encode(astronaut[:-2], "PNG"))  # changed since cleaning: decoded, refused
  with pytest.raises(ValueError, match="CSV row says"):
    shards.make_example(str(tmp_path), face, fingerprint[0])
  assert dedup.bytes_digest(path.read_bytes()) != fingerprint[0]


def write_images(folder, names, size=(30, 40)):
  rng = np.random.RandomState(0)
  os.makedirs(folder, exist_ok=True)
  for name in names:
    pixels = rng.randint(0, 256, size + (3,), dtype=np.uint8)
    with open(os.path.join(folder, name), "wb") as f:
      f.write(encode(pixels, "PNG"))


def examples(data_dir, split):
  return {ex["image_name"].decode(): ex for ex in
          tfds.as_numpy(dataset_info.builder(data_dir).as_dataset(split=split))}


def test_tfds_round_trip_of_every_split(tmp_path, default_schema):
  names = [f"img{i:03d}.png" for i in range(40)]
  write_images(str(tmp_path / "imgs"), names)
  rng = np.random.RandomState(1)
  rows = [row(n, rng.uniform(0, 30, 10)) for n in names]
  splits = splits_lib.assign_splits(rows, (0.6, 0.2, 0.2))
  out = str(tmp_path / "out")
  os.makedirs(out)
  counts = shards.write_dataset(out, splits, str(tmp_path / "imgs"), default_schema,
                                 num_shards=3)
  assert sum(counts.values()) == 40 and all(counts.values())
  assert dataset_info.load_schema(out) == default_schema
  info = dataset_info.builder(out).info
  assert info.splits["train"].num_shards == 3
  # The split infos recorded as written are those TFDS counts by reading the shards back.
  template = tfds.core.ShardedFileTemplate(
      data_dir=tfds.core.Path(out), template=dataset_info.FILENAME_TEMPLATE,
      dataset_name=dataset_info.DATASET_NAME, filetype_suffix="tfrecord")
  with contextlib.redirect_stdout(io.StringIO()):
    counted = tfds.folder_dataset.compute_split_info(filename_template=template)
  assert [(s.name, s.shard_lengths, s.num_bytes) for s in counted] == [
      (s.name, s.shard_lengths, s.num_bytes) for s in
      sorted(info.splits.values(), key=lambda s: s.name)]
  for split in splits_lib.SPLITS:
    found = examples(out, split)
    assert sorted(found) == sorted(r.image_name for r in splits[split])
    for r in splits[split]:
      ex = found[r.image_name]
      np.testing.assert_array_equal(ex["keypoints_px"], r.keypoints().astype(np.float32))
      np.testing.assert_allclose(ex["keypoints"], r.keypoints() / [40, 30], rtol=1e-6)
      assert (ex["width"], ex["height"]) == (40, 30) and ex["image"].shape == (30, 40, 3)
      np.testing.assert_array_equal(ex["image"], images.load_rgb(f"{tmp_path}/imgs/{r.image_name}"))


def test_an_empty_split_is_left_out_and_old_shards_are_replaced(tmp_path, default_schema):
  names = [f"img{i}.png" for i in range(6)]
  write_images(str(tmp_path / "imgs"), names)
  out = str(tmp_path / "out")
  os.makedirs(out)
  rows = [row(n) for n in names]
  shards.write_dataset(out, splits_lib.assign_splits(rows, (0.5, 0.25, 0.25)),
                        str(tmp_path / "imgs"), default_schema, num_shards=2)
  shards.write_dataset(out, splits_lib.assign_splits(rows, (1.0, 0.0, 0.0)),
                        str(tmp_path / "imgs"), default_schema)
  assert sorted(f for f in os.listdir(out) if ".tfrecord" in f) == [
      "facekp-train.tfrecord-00000-of-00001"]
  assert list(dataset_info.builder(out).info.splits) == ["train"]
  assert len(examples(out, "train")) == 6
  with pytest.raises(ValueError, match="no usable rows"):
    shards.write_dataset(out, {s: [] for s in splits_lib.SPLITS}, "", default_schema)


def test_the_metadata_records_the_keypoint_convention_and_the_crop(tmp_path, default_schema):
  names = [f"img{i}.png" for i in range(4)]
  write_images(str(tmp_path / "imgs"), names, size=(32, 32))
  out = str(tmp_path / "out")
  os.makedirs(out)
  shards.write_dataset(out, {"train": [row(n, width=32, height=32) for n in names],
                              "validation": [], "test": []},
                        str(tmp_path / "imgs"), default_schema,
                        crop=keypoints.crop_method(32), input_size=32)
  expected = {"coordinates": "continuous", "normalised_by": "image width and height",
              "crop": "facekp_align_32", "input_size": 32}
  assert dataset_info.read_metadata(out) == expected
  info = dataset_info.builder(out).info
  assert info.metadata["keypoints"] == expected
  # No made-up homepage in what is written (TFDS's DatasetInfo.homepage invents its catalogue
  # URL on reading when none is stored; facekp stores none).
  written = [open(f"{out}/{f}").read() for f in os.listdir(out) if f.endswith(".json")]
  assert written and not any("http" in text for text in written)


def test_a_damaged_shard_is_named_by_every_read(tmp_path, default_schema):
  """The training mean reads the shards' CRCs first; a valid record with a corrupt PNG is named
  by its shard and example."""
  names = [f"img{i}.png" for i in range(3)]
  write_images(str(tmp_path / "imgs"), names, size=(16, 16))
  out = str(tmp_path / "out")
  os.makedirs(out)
  shards.write_dataset(out, {"train": [row(n, [5.0] * 10, 16, 16) for n in names],
                              "validation": [], "test": []}, str(tmp_path / "imgs"),
                        default_schema)
  (shard,) = [f"{out}/{f}" for f in os.listdir(out) if ".tfrecord-" in f]
  good = open(shard, "rb").read()
  middle = len(good) // 2
  with open(shard, "wb") as f:  # a flipped byte in the middle: a CRC error
    f.write(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:])
  with pytest.raises(ValueError, match=f"{shard}: corrupt TFRecord shard"):
    input_pipeline.train_mean_keypoints(out)
  spec = dataset_info.features(5)
  bad = shards.make_example(str(tmp_path / "imgs"), row(names[1], [5.0] * 10, 16, 16))
  bad["image"] = bad["image"][:40] + bytes(len(bad["image"]) - 40)  # a valid record, bad PNG
  shards.write_shard(shard, [shards.make_example(str(tmp_path / "imgs"),
                                                   row(names[0], [5.0] * 10, 16, 16)), bad], spec)
  shards.write_metadata(out, spec, default_schema)
  with pytest.raises(ValueError, match=f"corrupt image in {shard}, record 1 \\(img1.png\\)"):
    input_pipeline.load_arrays(out, "train", image_size=16)


def test_a_users_csv_names_stay_inside_the_image_folder(tmp_path):
  folder = tmp_path / "imgs"
  assert keypoint_csv.relative_name("./a/b.png", str(folder)) == "a/b.png"
  assert keypoint_csv.relative_name(f"{folder}/a/b.png", str(folder)) == "a/b.png"
  for name in ("../b.png", "a/../../b.png", "/etc/passwd"):
    with pytest.raises(ValueError, match="outside the image folder"):
      keypoint_csv.relative_name(name, str(folder))


def test_a_csv_with_a_byte_order_mark_reads(tmp_path, default_schema):
  path = tmp_path / "k.csv"
  header = ",".join(("image_name",) + default_schema.csv_point_columns)
  path.write_bytes(("\ufeff" + header + "\na.png," + ",".join(["5"] * 10) + "\n").encode())
  (only,) = keypoint_csv.read_keypoints_csv(str(path), default_schema)
  assert only.image_name == "a.png"


def test_normalised_points_are_detected_and_converted(tmp_path):
  write_images(str(tmp_path / "imgs"), ["a.png"], size=(30, 40))
  rows = [row("a.png", [0.5, 0.25] * 5, None, None)]
  assert cleaning.looks_normalised(rows)
  assert not cleaning.looks_normalised([row("a.png")])
  (converted,) = cleaning.normalised_to_pixels(rows, str(tmp_path / "imgs"))
  np.testing.assert_allclose(converted.keypoints(), [[20.0, 7.5]] * 5)


def test_records_are_what_tfds_serialises_byte_for_byte(astronaut, caplog, monkeypatch):
  """shards.encode_example writes TFDS's bytes (names in any script, every size and point,
  negative zero); a RowSerializer that finds another serialisation uses TFDS's for the shard."""
  spec = dataset_info.features(5)
  image = encode(astronaut, "PNG")
  rng = np.random.default_rng(0)
  for name, size, points in [("a.png", 128, rng.uniform(0, 128, (5, 2))),
                             ("dir/visage-été 顔.png", 4096, rng.uniform(-5, 5000, (5, 2))),
                             ("x" * 300, 1, np.array([[-0.0, 0.0]] * 5)),
                             ("b.jpg", 70000, np.full((5, 2), 3.4e38))]:
    points = points.astype(np.float32)
    example = {"image": image[:size * 7], "image_name": name, "height": np.int32(size),
               "width": np.int32(size + 1), "keypoints_px": points,
               "keypoints": (points / size).astype(np.float32)}
    assert shards.encode_example(example) == spec.serialize_example(example), name
    serializer = shards.RowSerializer(spec)
    assert serializer(example) == spec.serialize_example(example) and serializer.direct
  original = shards.encode_example
  monkeypatch.setattr(shards, "encode_example", lambda ex: original(ex) + b"\x00")  # other bytes
  other = shards.RowSerializer(spec)
  assert other(example) == spec.serialize_example(example) and other.direct is False
  assert other(example) == spec.serialize_example(example)
  assert "writing through TFDS" in caplog.text


def test_read_images_takes_what_was_read_and_checks_what_may_have_changed(
    tmp_path, astronaut, monkeypatch):
  """Known reads of this run are taken as they are; an earlier run's are taken after a hash of
  the file, without a decode; a file changed since is read and decoded again."""
  for name, pixels in (("a.png", astronaut), ("b.png", astronaut[::2]), ("c.png", astronaut)):
    (tmp_path / name).write_bytes(encode(pixels, "PNG"))
  rows = [row(name) for name in ("a.png", "b.png", "c.png", "missing.png")]
  full = cleaning.read_images(rows, str(tmp_path))
  assert full["missing.png"] == ("missing_file", None)
  known = {"a.png": (*full["a.png"], True), "b.png": (*full["b.png"], False),
           "c.png": (*full["c.png"], False)}
  (tmp_path / "c.png").write_bytes(encode(astronaut[:-3], "PNG"))  # changed since it was read
  decoded = []
  real_decode = images.decode_rgb
  monkeypatch.setattr(images, "decode_rgb", lambda data, path="": decoded.append(path) or
                      real_decode(data, path))
  read = cleaning.read_images(rows, str(tmp_path), known=known)
  assert decoded == [str(tmp_path / "c.png")]
  assert read == {**full, "c.png": cleaning.read_image(str(tmp_path / "c.png"))}
  assert read["c.png"][0] == (astronaut.shape[1], astronaut.shape[0] - 3)
  assert list(read) == sorted(read)
