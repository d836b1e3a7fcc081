"""facekp.dedup: copies found by bytes, pixels and perceptual hash, and kept in one split."""
import os

import cv2
import numpy as np

from facekp import dedup
from facekp import images
from facekp import keypoint_csv
from facekp import splits as splits_lib
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
  groups, near = dedup.find_groups(prints)
  assert groups == [["a.jpg", "a.png", "a.webp", "a_small.png", "copy_of_a.png"],
                    ["hopper.png", "hopper_dark.png"]]
  assert all(distance <= dedup.PHASH_MAX_DISTANCE for _, _, distance in near)
  report = dedup.report(groups, near, prints)
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
