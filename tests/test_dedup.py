"""facekp.data.dedup: copies found by bytes, pixels and perceptual hash, and kept in one split."""
import itertools
import os

import cv2
import numpy as np

from facekp.core import images
from facekp.core import keypoint_csv
from facekp.data import dedup
from facekp.data import splits as splits_lib
from conftest import SAMPLE_DIR, encode


def sample(name):
  return images.load_rgb(os.path.join(SAMPLE_DIR, name))


def test_copies_are_grouped_and_different_faces_are_not(astronaut):
  hopper = sample("grace_hopper.jpg")
  smaller = cv2.resize(astronaut, (200, 200), interpolation=cv2.INTER_AREA)
  encoded = {
      "a.png": encode(astronaut, "PNG"),
      "copy_of_a.png": encode(astronaut, "PNG"),  # same bytes
      "a.webp": encode(astronaut, "WEBP", lossless=True),  # same pixels
      "a.jpg": encode(astronaut, "JPEG", quality=70),  # near: recompressed
      "a_small.png": encode(smaller, "PNG"),  # near: resized
      "hopper.png": encode(hopper, "PNG"),
      "hopper_dark.png": encode((hopper * 0.8).astype(np.uint8), "PNG"),  # near: darker
  }
  for other in ("multi_face.jpg", "0-f1-su-ph.jpg", "45-m7-di-ph.jpg", "15-f13-anc-ph.jpg"):
    encoded[other] = encode(sample(other), "PNG")
  prints = {name: dedup.fingerprint(data, images.decode_rgb(data))
            for name, data in encoded.items()}
  groups, near_count = dedup.find_groups(prints)
  assert groups == [["a.jpg", "a.png", "a.webp", "a_small.png", "copy_of_a.png"],
                    ["hopper.png", "hopper_dark.png"]]
  hashes = {name: fingerprint[2] for name, fingerprint in prints.items()}
  assert near_count == sum(dedup.hamming(hashes[a], hashes[b]) <= dedup.PHASH_MAX_DISTANCE
                           for a, b in itertools.combinations(sorted(hashes), 2))
  report = dedup.report(groups, near_count, prints)
  assert (report["groups"], report["images_in_groups"]) == (2, 7)
  assert (report["same_bytes_images"], report["same_pixels_images"]) == (2, 3)


def test_hamming_counts_differing_bits():
  assert dedup.hamming("00ff", "00ff") == 0
  assert dedup.hamming("0001", "0003") == 1
  assert dedup.hamming("ffff", "0000") == 16


def test_a_group_takes_one_split_key_with_the_other_faces_of_its_photos():
  names = ["photoA_f0.png", "photoA_f1.png", "photoB_f0.png", "photoC_f0.png"]
  keys = dedup.split_keys(names, [["photoA_f1.png", "photoB_f0.png"]], splits_lib.group_key)
  assert keys == {"photoA_f0.png": "photoA", "photoA_f1.png": "photoA",
                  "photoB_f0.png": "photoA", "photoC_f0.png": "photoC"}


def test_copies_land_in_one_split():
  names = [f"p{i}.png" for i in range(200)]
  rows = [keypoint_csv.missing_row(n, 5, keypoint_csv.OK, 10, 10) for n in names]
  groups = [names[i:i + 4] for i in range(0, 200, 4)]
  keys = dedup.split_keys(names, groups, splits_lib.group_key)
  splits = splits_lib.assign_splits(rows, (0.5, 0.25, 0.25), keys)
  where = {row.image_name: split for split, rows in splits.items() for row in rows}
  assert all(len({where[n] for n in group}) == 1 for group in groups)
  assert len(set(where.values())) == 3
  # Without groups the same names scatter.
  plain = splits_lib.assign_splits(rows, (0.5, 0.25, 0.25))
  where = {row.image_name: split for split, rows in plain.items() for row in rows}
  assert any(len({where[n] for n in group}) > 1 for group in groups)


def _flip_bits(hex_hash, count, rng):
  bits = np.unpackbits(np.frombuffer(bytes.fromhex(hex_hash), np.uint8))
  bits[rng.choice(bits.size, count, replace=False)] ^= 1
  return np.packbits(bits).tobytes().hex()


def _hashes_with_near_pairs(rng, seeds=60):
  """Random 256-bit hashes and, for each, variants 0-40 bits away (around the threshold), and
  skewed bits (as a face's low DCT frequencies), so chunks collide and chains form."""
  hashes = []
  for _ in range(seeds):
    bits = (rng.random(256) < np.linspace(0.05, 0.5, 256)).astype(np.uint8)
    seed = np.packbits(bits).tobytes().hex()
    hashes.append(seed)
    for distance in rng.choice([0, 1, 2, 16, 31, 32, 32, 33, 34, 40], 4):
      hashes.append(_flip_bits(seed, distance, rng))
    hashes.append(_flip_bits(hashes[-1], 30, rng))  # a chain: near the variant, maybe not seed
  return hashes


def _brute_force_pairs(hashes, max_distance):
  return {(i, j) for i, j in itertools.combinations(range(len(hashes)), 2)
          if dedup.hamming(hashes[i], hashes[j]) <= max_distance}


def test_the_index_finds_every_pair_that_all_pairs_finds():
  rng = np.random.default_rng(0)
  hashes = _hashes_with_near_pairs(rng)
  for max_distance in (0, 1, 7, 31, 32, 33):
    expected = _brute_force_pairs(hashes, max_distance)
    found = dedup.near_pairs(hashes, max_distance, batch=64)  # small batches: many of them
    assert sorted(map(tuple, found.tolist())) == sorted(expected), max_distance
  assert len(_brute_force_pairs(hashes, 32)) > len(_brute_force_pairs(hashes, 31)) > 60


def _brute_force_groups(names, hashes, max_distance):
  """The rule the index must reproduce: union of all pairs within max_distance bits."""
  parent = list(range(len(names)))
  def root(k):
    while parent[k] != k:
      k = parent[k]
    return k
  for i, j in _brute_force_pairs(hashes, max_distance):
    parent[root(j)] = root(i)
  members = {}
  for k, name in enumerate(names):
    members.setdefault(root(k), []).append(name)
  return sorted(sorted(g) for g in members.values() if len(g) > 1)


def test_groups_match_all_pairs_with_repeated_hashes():
  rng = np.random.default_rng(1)
  hashes = _hashes_with_near_pairs(rng, seeds=40)
  hashes += [hashes[k] for k in rng.choice(len(hashes), 50)]  # identical hashes, other files
  names = [f"img{k:03d}.png" for k in rng.permutation(len(hashes))]
  prints = {name: (f"bytes{k}", f"pixels{k}", h) for k, (name, h) in enumerate(zip(names, hashes))}
  for max_distance in (0, 32):
    groups, near_count = dedup.find_groups(prints, max_distance)
    assert groups == _brute_force_groups(names, hashes, max_distance)
    assert near_count == len(_brute_force_pairs(hashes, max_distance))
  assert dedup.find_groups(prints, -1) == ([], 0)
  assert dedup.find_groups({}) == ([], 0)
