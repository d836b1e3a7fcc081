"""Cleaning: which keypoint rows make usable examples, and a report of the others."""
import collections
import math

import numpy as np

from facekp.core import dataset_info
from facekp.core import files
from facekp.core import images
from facekp.core import keypoint_csv
from facekp.core import keypoints as keypoints_lib
from facekp.data import dedup
from facekp.data import splits
from facekp.core.keypoint_csv import MISSING, OK

# Status under which a row marked ok but with blank or NaN points is reported.
BLANK_POINTS = "ok_with_blank_or_nan_points"

DROP_REASONS = ("duplicate_name", "missing_keypoints", "missing_file", "unreadable_file",
                "size_mismatch", "outside_image")


def _has_missing_points(row):
  return row.status != OK or any(v == MISSING or math.isnan(v) for v in row.points)


def read_image(path, expected=None):
  """((width, height) of the image at path or the reason it cannot be used, its facekp.data.dedup
  fingerprint or None): one read and one decode for both. `expected`: that pair as read before
  from bytes of its fingerprint's digest; taken without a decode when the file still holds
  bytes of that digest."""
  try:
    data = images.read_bytes(path)
    if expected is not None and dedup.bytes_digest(data) == expected[1][0]:
      return expected
    rgb = images.decode_rgb(data, path)
  except images.ImageError as e:
    return ("missing_file" if e.reason == "missing" else "unreadable_file"), None
  height, width = rgb.shape[:2]
  return (width, height), dedup.fingerprint(data, rgb)


def read_images(rows, images_dir, map_fn=map, known=None):
  """{name: read_image of it} for the rows with points; `map_fn` runs the reads (the builtin
  map, or a process pool's).

  `known`: {name: (size, fingerprint, checked)} of images read before (annotation reads and
  decodes them: facekp.data.annotate.image_reads): those `checked` (their bytes read or hashed
  by this run) are taken as they are; the others are read again and decoded only when their
  bytes changed. The result is read_image's for every name either way."""
  names = sorted({row.image_name for row in rows if not _has_missing_points(row)})
  known = known or {}
  read = {name: known[name][:2] for name in names if name in known and known[name][2]}
  todo = [name for name in names if name not in read]
  expected = [known[name][:2] if name in known else None for name in todo]
  read.update(zip(todo, map_fn(read_image, [f"{images_dir}/{name}" for name in todo], expected)))
  return {name: read[name] for name in names}


def _drop_reason(row, size):
  """(None, the row with its size filled in) for a usable row, else (the reason to drop it,
  the row). `size`: (width, height) of its image, or the reason it cannot be used."""
  if _has_missing_points(row):
    return "missing_keypoints", row
  if isinstance(size, str):
    return size, row
  width, height = size
  if row.width is not None and (row.width, row.height) != (width, height):
    return "size_mismatch", row
  row = row._replace(width=width, height=height)
  points = row.points  # (x, y) pairs, none NaN here: plain comparisons, no array per row
  if points and (min(points) < 0 or max(points[0::2]) > width or max(points[1::2]) > height):
    return "outside_image", row
  return None, row


def clean(rows, images_dir, read=None):
  """Drops unusable rows. Returns (kept rows, report dict with counts per reason).

  Copies of a name that agree are kept once; copies that disagree are all dropped. `read`:
  read_images of the rows (read here when None).
  """
  read = read_images(rows, images_dir) if read is None else read
  by_name = collections.defaultdict(list)
  for row in rows:
    by_name[row.image_name].append(row)
  dropped = collections.Counter({reason: 0 for reason in DROP_REASONS})
  missing_by_status = collections.Counter()
  singles = []
  for copies in by_name.values():
    if len(set(copies)) > 1:
      dropped["duplicate_name"] += len(copies)
    else:
      dropped["duplicate_name"] += len(copies) - 1
      singles.append(copies[0])
  kept = []
  for row in singles:
    reason, row = _drop_reason(row, read.get(row.image_name, (None,))[0])
    if reason is None:
      kept.append(row)
    else:
      dropped[reason] += 1
      if reason == "missing_keypoints":
        missing_by_status[BLANK_POINTS if row.status == OK else row.status] += 1
  report = {"rows": len(rows), "kept": len(kept), "dropped": dict(dropped),
            "missing_keypoints_by_status": dict(sorted(missing_by_status.items()))}
  return kept, report


def write_report(path, report):
  files.write_json(path, report)


def digests(kept, read):
  """{image name: bytes digest} of the kept rows' images as read_images decoded them."""
  return {row.image_name: read[row.image_name][1][0] for row in kept}


def write_cleaned(kept, report, out_dir, schema, read):
  """Finds copies among the kept images (adding the report's "duplicates" entry) and writes
  cleaned.csv, cleaning_report.json and duplicates.json. Returns ({image name: split key}:
  copies share a key, so they land in one split; the groups of copies).

  `read`: read_images of (at least) the kept rows, which holds their fingerprints. Re-crops
  (splits.is_recrop) are not searched: they look like their face by design, and follow it."""
  names = [row.image_name for row in kept if not splits.is_recrop(row.image_name)]
  groups, report["duplicates"] = dedup.find_duplicates({name: read[name][1] for name in names})
  keypoint_csv.write_keypoints_csv(f"{out_dir}/{dataset_info.CLEANED_CSV}", kept, schema)
  write_report(f"{out_dir}/{dataset_info.CLEANING_REPORT}", report)
  files.write_json(f"{out_dir}/{dataset_info.DUPLICATES_JSON}", {"groups": groups})
  return dedup.split_keys(names, groups, splits.group_key), groups


def looks_normalised(rows):
  """Whether a CSV's points all lie in [0, 1]: normalised coordinates, not pixels (a pixel
  keypoint of a face photo lies beyond 1 px from the corner)."""
  points = [row.keypoints() for row in rows if not _has_missing_points(row)]
  return bool(points) and bool(np.all((np.stack(points) >= 0) & (np.stack(points) <= 1)))


def normalised_to_pixels(rows, images_dir):
  """Rows of normalised points -> rows in pixels of their images (rows that cannot be read
  or have no points are left for `clean` to report)."""
  converted = []
  for row in rows:
    if not _has_missing_points(row):
      try:
        width, height = images.image_size(f"{images_dir}/{row.image_name}")
      except images.ImageError:
        converted.append(row)
        continue
      points = keypoints_lib.to_pixels(row.keypoints(), width, height)
      row = row._replace(points=tuple(points.ravel()))
    converted.append(row)
  return converted
