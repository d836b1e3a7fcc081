"""The built-in sample photos (facekp/sample, with their sources and licences in SOURCES.md)."""
import os

import numpy as np
import tensorflow as tf

from facekp.core import images

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample")


def sample_photos():
  """The paths of the sample photos, sorted."""
  return [os.path.join(SAMPLE_DIR, name) for name in sorted(os.listdir(SAMPLE_DIR))
          if name.endswith(".jpg")]


def sample_photo(name):
  """The path of one sample photo by its file name (e.g. "astronaut.jpg"): ships with facekp, so
  examples and checks run without photos of one's own."""
  paths = {os.path.basename(path): path for path in sample_photos()}
  if name not in paths:
    raise ValueError(f"no sample photo {name!r}; the sample photos are {', '.join(paths)}")
  return paths[name]


def sample_faces(image_size):
  """The committed sample photos, centre-cropped square and resized: uint8 [N, S, S, 3]."""
  faces = []
  for path in sample_photos():
    image = images.load_rgb(path)
    side = min(image.shape[:2])
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    square = image[top:top + side, left:left + side]
    faces.append(tf.image.resize(square, (image_size, image_size), antialias=True).numpy())
  return np.clip(np.round(np.stack(faces)), 0, 255).astype(np.uint8)
