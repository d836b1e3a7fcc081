"""Duplicate and near-duplicate images: copies that must land in one split.

Three tests, from strict to loose, each enough to join two images in a group:
  same bytes       sha256 of the file as read on this run (never a journal's stamp);
  same pixels      sha256 of the decoded RGB array (one photo re-encoded, PNG vs BMP, ...);
  same face        a 256-bit perceptual hash (DCT of the 32 x 32 grey image, as pHash) within
                   PHASH_MAX_DISTANCE bits: one face resaved, recoloured, resized, drawn on,
                   or the next frame of a video (calibration: docs/engineering.md).
Groups are transitive (a union-find over all three tests). A 64-bit hash is too coarse for
aligned faces: there two different people's crops came within 4 bits. Near hashes are found
through an index (`near_pairs`), not by comparing all pairs.
"""
import collections
import hashlib

import numpy as np

# Copies of one photo lie well inside this many bits of 256, different people well outside
# (docs/engineering.md gives the calibration).
PHASH_MAX_DISTANCE = 32
_HASH_SIDE = 32
_DCT_SIDE = 16
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)
_POPCOUNT_16 = (_POPCOUNT[:, None] + _POPCOUNT[None]).ravel()


def bytes_digest(data):
  return hashlib.sha256(data).hexdigest()


def pixels_digest(rgb):
  shape = ",".join(map(str, rgb.shape)).encode()
  return hashlib.sha256(shape + b":" + np.ascontiguousarray(rgb).tobytes()).hexdigest()


def perceptual_hash(rgb):
  """256-bit pHash as hex: signs of the 16 x 16 lowest DCT frequencies of the 32 x 32 grey image
  against their median (the constant term, which only measures brightness, left out)."""
  import cv2  # pylint: disable=g-import-not-at-top  (dataset imports this module for training)
  grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
  small = cv2.resize(grey, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
  low = cv2.dct(small)[:_DCT_SIDE, :_DCT_SIDE].ravel()
  # The median of the 255 others is their middle value: np.median's value, found cheaper.
  middle = (low.size - 1) // 2
  return np.packbits(low > np.partition(low[1:], middle)[middle]).tobytes().hex()


def hamming(a, b):
  return int(bin(int(a, 16) ^ int(b, 16)).count("1"))


def fingerprint(data, rgb):
  """What dedup needs of one image: (bytes digest, pixels digest, perceptual hash)."""
  return bytes_digest(data), pixels_digest(rgb), perceptual_hash(rgb)


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


def hash_bits(hashes):
  """Hex hashes -> uint8 [n, bytes]."""
  return np.frombuffer(bytes.fromhex("".join(hashes)), np.uint8).reshape(len(hashes), -1)


def _distances(bits, i, j):
  """Hamming distances of hashes i and j (uint8 rows of bits), 16 bits per table look-up."""
  halves = bits.view(np.uint16)
  return _POPCOUNT_16[halves[i] ^ halves[j]].sum(-1, dtype=np.int32)


def _chunk_values(bits, chunks):
  """[chunks, n] int64: chunk c of a hash holds its bits c, c + chunks, c + 2 chunks, ...
  (interleaved, so that the DCT's low frequencies, the least random bits, spread over all)."""
  unpacked = np.unpackbits(bits, axis=1)
  values = np.zeros((chunks, len(bits)), np.int64)
  for c in range(chunks):
    part = unpacked[:, c::chunks].astype(np.int64)
    values[c] = part @ (1 << np.arange(part.shape[1], dtype=np.int64))
  return values, [len(range(c, unpacked.shape[1], chunks)) for c in range(chunks)]


def _candidates(values, width, batch):
  """(i, j) arrays, i < j, of every pair whose chunk values differ in at most one bit, in
  batches of about `batch` probes: each hash looks up its own value (pairs within a bucket)
  and its value with one 0 bit set (so a pair one bit apart is found once, from its lower
  value)."""
  order = np.argsort(values, kind="stable")
  ordered = values[order]
  masks = np.concatenate([[0], 1 << np.arange(width, dtype=np.int64)])
  step = max(1, batch // len(masks))
  for start in range(0, len(values), step):
    own = values[start:start + step, None]
    probes = own | masks[None]
    low = np.searchsorted(ordered, probes, "left")
    counts = np.searchsorted(ordered, probes, "right") - low
    counts[(own & masks[None]) != 0] = 0  # a 1 bit set again: its own value, already probed
    low, counts = low.ravel(), counts.ravel()
    i = np.repeat(np.arange(start, start + len(own)).repeat(len(masks)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    j = order[np.repeat(low, counts) + offsets]
    one_bit = np.repeat(np.tile(masks != 0, len(own)), counts)
    keep = one_bit | (i < j)  # a pair in one bucket comes from both its hashes: once
    i, j = i[keep], j[keep]
    yield np.minimum(i, j), np.maximum(i, j)


def near_pairs(hashes, max_distance, batch=1 << 20):
  """int64 [pairs, 2] (i < j) of the hashes within max_distance bits of each other.

  Multi-index hashing: the bits are dealt into max_distance // 2 + 1 chunks, so two hashes
  within max_distance bits differ in at most one bit of some chunk (else every chunk would
  hold two differences: more than max_distance). Pairs that share a chunk value up to one bit
  are the candidates, checked exactly: for 256-bit hashes within 32, 17 chunks of 15-16 bits,
  about n^2 / 2^11 candidates for uniform bits (20 million for 70,000 hashes, seconds) where
  all pairs are n^2 / 2."""
  if len(hashes) < 2 or max_distance < 0:
    return np.zeros((0, 2), np.int64)
  bits = hash_bits(hashes)
  chunks = max_distance // 2 + 1
  if chunks * 4 > bits.shape[1] * 8:  # chunks too narrow to sort anything out: all pairs
    i, j = np.triu_indices(len(bits), 1)
    found = [(i, j)]
  else:
    values, widths = _chunk_values(bits, chunks)
    found = (pair for c in range(chunks) for pair in _candidates(values[c], widths[c], batch))
  keys = []
  for i, j in found:
    near = _distances(bits, i, j) <= max_distance
    keys.append(i[near] * len(bits) + j[near])
  keys = np.unique(np.concatenate(keys))
  return np.stack([keys // len(bits), keys % len(bits)], axis=1)


def find_groups(fingerprints, max_distance=PHASH_MAX_DISTANCE):
  """{name: fingerprint} -> (groups of 2+ names, sorted; the number of pairs of names whose
  perceptual hashes lie within max_distance bits). Equal hashes are counted and joined once
  per value, so the search only sees the distinct ones."""
  names = sorted(fingerprints)
  union = _UnionFind(names)
  columns = list(zip(*(fingerprints[n] for n in names))) if names else [(), (), ()]
  _join_equal(union, names, columns[0])
  _join_equal(union, names, columns[1])
  near_count = 0
  if max_distance >= 0:
    _join_equal(union, names, columns[2])
    hashes, first, counts = np.unique(np.array(columns[2], dtype=str), return_index=True,
                                      return_counts=True)
    near = near_pairs(list(hashes), max_distance)
    for a, b in near:
      union.union(names[first[a]], names[first[b]])
    near_count = int((counts * (counts - 1) // 2).sum() +
                     (counts[near[:, 0]] * counts[near[:, 1]]).sum())
  return sorted(g for g in union.groups() if len(g) > 1), near_count


def split_keys(names, groups, group_key):
  """The split key of every name: its own group_key, or, for a member of a duplicate group, the
  smallest group_key of everything linked to it (through copies or through faces of one photo),
  so that copies land in one split and the key stays put when unrelated images are added."""
  keys = {name: group_key(name) for name in names}
  union = _UnionFind(set(keys.values()))
  for group in groups:
    for other in group[1:]:
      union.union(keys[group[0]], keys[other])
  return {name: union.find(keys[name]) for name in names}


def find_duplicates(prints):
  """{name: fingerprint} -> (groups of copies, the cleaning report's "duplicates" entry)."""
  groups, near_count = find_groups(prints)
  return groups, report(groups, near_count, prints)


def report(groups, near_count, fingerprints):
  """The cleaning report's entry: counts and the groups, with how each was found."""
  by_bytes = collections.Counter(fingerprints[n][0] for n in fingerprints)
  by_pixels = collections.Counter(fingerprints[n][1] for n in fingerprints)
  return {
      "groups": len(groups),
      "images_in_groups": sum(len(g) for g in groups),
      "same_bytes_images": sum(c for c in by_bytes.values() if c > 1),
      "same_pixels_images": sum(c for c in by_pixels.values() if c > 1),
      "near_pairs": near_count,
      "phash_max_distance": PHASH_MAX_DISTANCE,
      "members": groups,
  }
