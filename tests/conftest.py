"""Shared test inputs: the committed sample faces and synthesised good and bad image files."""
import io
import os

import numpy as np
from PIL import Image
import pytest

from facekp.core import schema as schema_lib

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "facekp", "sample")


def encode(array_or_image, fmt, **kwargs):
  image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(
      array_or_image)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


@pytest.fixture(scope="session")
def default_schema():
  """The default schema with its mirror partners written out (no MediaPipe needed)."""
  return schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))


@pytest.fixture(scope="session")
def astronaut():
  return np.asarray(Image.open(os.path.join(SAMPLE_DIR, "astronaut.jpg")).convert("RGB"))


@pytest.fixture(scope="session")
def image_files(astronaut):
  """{name: (bytes, status an annotator should give)}: a face in every stored form facekp
  converts, a blank image, and every kind of bad file."""
  face_png = encode(astronaut, "PNG")
  face_jpeg = encode(astronaut, "JPEG", quality=90)
  rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
  rgba[:20, :20, 3] = 0
  gray16 = (np.asarray(Image.fromarray(astronaut).convert("L"), np.uint16) * 257)
  return {
      "face.png": (face_png, "ok"),
      "sub/face.jpg": (face_jpeg, "ok"),
      "sub/deeper/gray.png": (encode(Image.fromarray(astronaut).convert("L"), "PNG"), "ok"),
      "rgba.png": (encode(rgba, "PNG"), "ok"),
      "palette.png": (encode(Image.fromarray(astronaut).quantize(256), "PNG"), "ok"),
      "gray16.png": (encode(Image.fromarray(gray16), "PNG"), "ok"),
      "face.webp": (encode(astronaut, "WEBP", lossless=True), "ok"),
      "blank.png": (encode(np.full((64, 96, 3), 128, np.uint8), "PNG"), "no_face"),
      "empty.jpg": (b"", "empty"),
      "notes.png": (b"these are not pixels\n", "not_an_image"),
      "truncated.jpg": (face_jpeg[:len(face_jpeg) // 2], "truncated"),
      "truncated.png": (face_png[:len(face_png) // 2], "truncated"),
      "corrupt.png": (face_png[:100] + bytes(len(face_png) - 100), "corrupt"),
  }


@pytest.fixture
def image_folder(tmp_path, image_files):
  """A folder holding `image_files` and a file that is not listed as an image."""
  folder = tmp_path / "images"
  for name, (data, _) in image_files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
  (folder / "README.txt").write_text("not listed: no image extension")
  return str(folder)


def write_labelled_dataset(data_dir, faces, splits=("train", "validation", "test"), seed=0):
  """The faces as a facekp dataset of the given splits, with made-up plausible keypoints."""
  from facekp.core import dataset_info  # pylint: disable=g-import-not-at-top  (TFDS: when used)
  from facekp.data import shards  # pylint: disable=g-import-not-at-top
  from facekp.core import keypoints as keypoints_lib  # pylint: disable=g-import-not-at-top
  schema = schema_lib.Schema(schema_lib.DEFAULT_MESH_INDICES, (1, 263, 291, 33, 61))
  keypoints = np.array([[0.5, 0.55], [0.3, 0.4], [0.35, 0.7], [0.7, 0.4], [0.65, 0.7]],
                       np.float32)
  rng = np.random.default_rng(seed)
  spec = dataset_info.features(schema.num_keypoints)
  size = faces.shape[1]
  for split in splits:
    examples = []
    for i, face in enumerate(faces):
      points = keypoints + rng.normal(0, 0.01, keypoints.shape).astype(np.float32)
      examples.append({"image": face, "image_name": f"{split}_{i}.png", "height": size,
                       "width": size, "keypoints": points,
                       "keypoints_px": keypoints_lib.to_pixels(points, size).astype(np.float32)})
    shards.write_shard(dataset_info.shard_path(data_dir, split, 0, 1), examples, spec)
  shards.write_metadata(data_dir, spec, schema)


@pytest.fixture(scope="session")
def labelled_dataset():
  """write_labelled_dataset, for tests that need a facekp dataset on disk."""
  return write_labelled_dataset


def copies_of(folder, sample_name, count):
  """`count` copies of a sample photo, p00.jpg, p01.jpg, ..., in a new folder."""
  os.makedirs(folder)
  data = open(os.path.join(SAMPLE_DIR, sample_name), "rb").read()
  for i in range(count):
    with open(os.path.join(folder, f"p{i:02d}.jpg"), "wb") as f:
      f.write(data)
  return folder


def user_csv(path, schema, lines):
  """A user's CSV in the seed's format: image_name and the points; `lines` are its rows."""
  with open(path, "w") as f:
    f.write("\n".join([",".join(("image_name",) + schema.csv_point_columns), *lines]) + "\n")
  return path
