"""Splitting: train / validation / test by a hash of the photo, stable when images change.

Re-crops of a face (make_tfrecords --recrops; facekp.data.faces.recrops), named
"<face stem>_r<j>.png" beside the face's "<face stem>.png", go where their face goes, and into
the train split only: validation and test keep the faces as cropped for every user.
"""
import hashlib
import math
import posixpath
import re

SPLITS = ("train", "validation", "test")
_FACE_SUFFIX = re.compile(r"_f\d+(_r\d+)?$")
_RECROP = re.compile(r"(_f\d+)_r\d+(\.png)$")  # "<stem>_f<k>_r<j>.png": re-crop j of face k


def parse_fractions(text):
  """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1): train, validation, test; finite, non-negative, summing
  to 1 (nan and inf are numbers to float(), not fractions)."""
  try:
    fractions = tuple(float(t) for t in text.split(","))
  except ValueError:
    raise ValueError(f"--split={text}: must be three comma-separated numbers (train, validation, "
                     "test) summing to 1, e.g. 0.8,0.1,0.1") from None
  if (len(fractions) != len(SPLITS) or not all(map(math.isfinite, fractions))
      or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6):
    raise ValueError(f"--split={text}: must be {len(SPLITS)} fractions from 0 to 1 (train, "
                     "validation, test) summing to 1, e.g. 0.8,0.1,0.1")
  return fractions


def group_key(image_name):
  """Faces cropped from one photo share a key: the name without extension and '_f<k>' suffix."""
  return _FACE_SUFFIX.sub("", posixpath.splitext(image_name)[0])


def recrop_name(face_name, j):
  """The name of re-crop j (from 1) of the face named `face_name` ("a_f0.png" -> "a_f0_r1.png")."""
  return f"{posixpath.splitext(face_name)[0]}_r{j}.png"


def is_recrop(image_name):
  return _RECROP.search(image_name) is not None


def recropped_face(image_name):
  """The face a re-crop was cut from ("a_f0_r1.png" -> "a_f0.png"); other names as they are."""
  return _RECROP.sub(r"\1\2", image_name)


def split_hash(key):
  """A fixed pseudo-random number in [0, 1) per split key: splits never move when others change."""
  digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(image_name, fractions, key=None):
  """The split of an image: by a hash of `key`, by default its photo's group_key."""
  h = split_hash(group_key(image_name) if key is None else key)
  bound = 0.0
  for split, fraction in zip(SPLITS, fractions):
    bound += fraction
    if h < bound:
      return split
  return [split for split, fraction in zip(SPLITS, fractions) if fraction > 0][-1]  # rounding


def assign_splits(rows, fractions, split_keys=None):
  """{split: rows}, each ordered by hash: a fixed shuffle that keeps a photo's faces together.

  `split_keys` ({image name: key}, facekp.data.dedup.split_keys) overrides the photo's group_key, so
  that copies of one image under different names land in one split. A re-crop takes its face's
  key and is left out unless that is the train split.
  """
  split_keys = split_keys or {}

  def key_of(row):
    face = recropped_face(row.image_name)
    return split_keys.get(face) or group_key(face)

  splits = {split: [] for split in SPLITS}
  for row in sorted(rows, key=lambda r: (split_hash(key_of(r)), r.image_name)):
    split = split_of(row.image_name, fractions, key_of(row))
    if split == "train" or not is_recrop(row.image_name):
      splits[split].append(row)
  return splits
