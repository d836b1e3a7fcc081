"""Duplicate and near-duplicate images: copies that must land in one split.

Three tests, from strict to loose, each enough to join two images in a group:
  same bytes       sha256 of the file;
  same pixels      sha256 of the decoded RGB array (one photo re-encoded, PNG vs BMP, ...);
  same face        a 256-bit perceptual hash (DCT of the 32 x 32 grey image, as pHash) within
                   PHASH_MAX_DISTANCE bits: one face resaved, recoloured, resized, drawn on,
                   or the next frame of a video. Calibrated on ../shared/data/aligned128.
Groups are transitive (a union-find over all three tests). A 64-bit hash is too coarse for
aligned faces: there two different people's crops came within 4 bits.
"""
import collections
import hashlib

import cv2
import numpy as np

from facekp import images

# Calibrated on the 432 crops of ../shared/data/aligned128 (256-bit hashes): one photo saved by
# different packages (Lena x3, Obama in two colour depths, a photo recoloured) lies 0-22 bits
# apart; frames of one video or one photo with drawings on it 14-34; different people 56 or more.
PHASH_MAX_DISTANCE = 32
_HASH_SIDE = 32
_DCT_SIDE = 16
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def bytes_digest(data):
  return hashlib.sha256(data).hexdigest()


def pixels_digest(rgb):
  shape = ",".join(map(str, rgb.shape)).encode()
  return hashlib.sha256(shape + b":" + np.ascontiguousarray(rgb).tobytes()).hexdigest()


def perceptual_hash(rgb):
  """256-bit pHash as hex: signs of the 16 x 16 lowest DCT frequencies of the 32 x 32 grey image
  against their median (the constant term, which only measures brightness, left out)."""
  grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
  small = cv2.resize(grey, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
  low = cv2.dct(small)[:_DCT_SIDE, :_DCT_SIDE].ravel()
  return np.packbits(low > np.median(low[1:])).tobytes().hex()


def hamming(a, b):
  return int(bin(int(a, 16) ^ int(b, 16)).count("1"))


def fingerprint(data, rgb):
  """What dedup needs of one image: (bytes digest, pixels digest, perceptual hash)."""
  return bytes_digest(data), pixels_digest(rgb), perceptual_hash(rgb)


def fingerprint_file(path):
  data = images.read_bytes(path)
  return fingerprint(data, images.decode_rgb(data, path))


class _UnionFind:

  def __init__(self, items):
    self.parent = {item: item for item in items}

  def find(self, item):
    while self.parent[item] != item:
      self.parent[item] = self.parent[self.parent[item]]
      item = self.parent[item]
    return item

  def union(self, a, b):
    a, b = self.find(a), self.find(b)
    if a != b:
      self.parent[max(a, b)] = min(a, b)

  def groups(self):
    members = collections.defaultdict(list)
    for item in self.parent:
      members[self.find(item)].append(item)
    return [sorted(group) for group in members.values()]


def _join_equal(union, names, keys):
  first = {}
  for name, key in zip(names, keys):
    if key in first:
      union.union(first[key], name)
    else:
      first.setdefault(key, name)


def _near_pairs(names, hashes, max_distance, block=256):
  """(name, name, distance) of hashes within max_distance bits: a blocked all-pairs count,
  about a second per 10^8 pairs (a dataset of ~10^4 images)."""
  bits = np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hashes]).reshape(
      len(hashes), -1)
  for start in range(0, len(hashes), block):
    distances = _POPCOUNT[bits[start:start + block, None] ^ bits[None]].sum(-1, dtype=np.int32)
    for i, j in zip(*np.nonzero(distances <= max_distance)):
      if start + i < j:
        yield names[start + i], names[j], int(distances[i, j])


def find_groups(fingerprints, max_distance=PHASH_MAX_DISTANCE):
  """{name: fingerprint} -> (groups of 2+ names, sorted; counts of pairs joined by each test)."""
  names = sorted(fingerprints)
  union = _UnionFind(names)
  columns = list(zip(*(fingerprints[n] for n in names))) if names else [(), (), ()]
  _join_equal(union, names, columns[0])
  _join_equal(union, names, columns[1])
  near = list(_near_pairs(names, list(columns[2]), max_distance)) if max_distance >= 0 else []
  for a, b, _ in near:
    union.union(a, b)
  groups = sorted(g for g in union.groups() if len(g) > 1)
  return groups, near


def split_keys(names, groups, group_key):
  """The split key of every name: its own group_key, or, for a member of a duplicate group, the
  smallest group_key of everything linked to it (through copies or through faces of one photo),
  so that copies land in one split and the key stays put when unrelated images are added."""
  union = _UnionFind({group_key(n) for n in names})
  for group in groups:
    for other in group[1:]:
      union.union(group_key(group[0]), group_key(other))
  return {name: union.find(group_key(name)) for name in names}


def find_duplicates(images_dir, names, map_fn=map):
  """(groups of copies among images_dir/<name>, the cleaning report's "duplicates" entry).

  `map_fn` runs the fingerprinting (the builtin map, or a process pool's)."""
  prints = dict(zip(names, map_fn(fingerprint_file, [f"{images_dir}/{n}" for n in names])))
  groups, near = find_groups(prints)
  return groups, report(groups, near, prints)


def report(groups, near, fingerprints):
  """The cleaning report's entry: counts and the groups, with how each was found."""
  by_bytes = collections.Counter(fingerprints[n][0] for n in fingerprints)
  by_pixels = collections.Counter(fingerprints[n][1] for n in fingerprints)
  return {
      "groups": len(groups),
      "images_in_groups": sum(len(g) for g in groups),
      "same_bytes_images": sum(c for c in by_bytes.values() if c > 1),
      "same_pixels_images": sum(c for c in by_pixels.values() if c > 1),
      "near_pairs": len(near),
      "phash_max_distance": PHASH_MAX_DISTANCE,
      "members": groups,
  }
