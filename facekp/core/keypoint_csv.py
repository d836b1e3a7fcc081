"""The keypoint CSV: face_keypoints.csv, cleaned.csv, predictions.csv and a user's --csv.

One row per image (or per face, for predictions and make_tfrecords --align):
  image_name,width,height,point_1_x,point_1_y,...,point_K_y,status,photo
in pixels of the image as `facekp.core.images.load_rgb` returns it, -1.0 where there is no point
(status says why: ok, no_face, unreadable, not_an_image, name_too_long, ...; width and height are
0 when the image could not be read). `photo` names the source image the row came from (the
image itself without --align; blank where it is not known, as in a user's CSV without it). A
user's own CSV needs only image_name and the point columns.
"""
import csv
import io
import os
import posixpath
import re
import typing

import numpy as np
import tensorflow as tf

from facekp.core import files

MISSING = -1.0
OK = "ok"
PHOTO = "photo"
_BOM = "\ufeff"


class KeypointRow(typing.NamedTuple):
  """One CSV row. `points` is flat (x1, y1, ..., xK, yK); width/height are None when unknown;
  `photo`: the source image's name, None when unknown."""
  image_name: str
  width: typing.Optional[int]
  height: typing.Optional[int]
  points: tuple
  status: str
  photo: typing.Optional[str] = None

  def keypoints(self):
    return np.asarray(self.points, dtype=np.float64).reshape(-1, 2)


def header(point_columns):
  return ("image_name", "width", "height", *point_columns, "status", PHOTO)


def csv_header(schema):
  return header(schema.csv_point_columns)


def missing_row(image_name, num_keypoints, status, width=0, height=0):
  return KeypointRow(image_name, width, height, (MISSING,) * (2 * num_keypoints), status)


def format_csv_fields(row):
  """Fields of a row as strings up to its status (a journal's row format); floats as their
  shortest exact repr (reruns match exactly)."""
  size = ["" if v is None else str(v) for v in (row.width, row.height)]
  return [row.image_name, *size, *(repr(float(v)) for v in row.points), row.status]


def csv_text(rows, point_columns):
  """The CSV (header(point_columns), then the rows in the given order) as text."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(header(point_columns))
  writer.writerows(format_csv_fields(row) + [row.photo or ""] for row in rows)
  return buffer.getvalue()


def write_keypoints_csv(path, rows, schema):
  """Writes rows (in the given order) through a temporary name."""
  files.atomic_write(path, csv_text(rows, schema.csv_point_columns))


def _field(fields, column, name, kind, where):
  """A number from a CSV row; None for an absent or blank size, MISSING for a blank point."""
  text = fields[column[name]].strip() if name in column else ""
  if not text:
    return MISSING if kind is float else None
  try:
    return kind(float(text))
  except ValueError:
    raise ValueError(f"{where}, column {name}: {text!r} is not a number") from None


def _printable(text):
  """`text` with control characters (a NUL in a damaged file) written as escapes."""
  return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


def read_keypoints_csv(path, schema):
  """Reads face_keypoints.csv (or a user's CSV in the seed's format) into KeypointRows.

  Required columns: image_name and point_1_x ... point_K_y for the schema's K points; width,
  height, status and photo are optional (unknown sizes are read from the images when cleaning).
  A file that is not a UTF-8 CSV is a ValueError naming it.
  """
  try:
    return _read_keypoints_csv(path, schema)
  except (UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{path}: not a UTF-8 CSV file ({e})") from None


def _read_keypoints_csv(path, schema):
  with tf.io.gfile.GFile(path) as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    if header:
      header[0] = header[0].lstrip(_BOM)  # Excel's "CSV UTF-8" starts with a byte-order mark
    point_columns = schema.csv_point_columns
    missing = [c for c in ("image_name",) + point_columns if c not in header]
    if missing:
      raise ValueError(f"{path}: missing required column(s) {', '.join(missing)} "
                       f"(the header is {_printable(','.join(header)) or 'empty'})")
    extra = sorted(c for c in header
                   if re.fullmatch(r"point_\d+_[xy]", c) and c not in point_columns)
    if extra:
      raise ValueError(f"{path}: point columns {', '.join(extra)} go beyond the "
                       f"{schema.num_keypoints} keypoints of the schema {schema.mesh_indices}")
    column = {name: i for i, name in enumerate(header)}
    rows = []
    for line_number, fields in enumerate(reader, start=2):
      if not fields:
        continue
      if len(fields) != len(header):
        raise ValueError(f"{path}, line {line_number}: {len(fields)} fields, but the header "
                         f"has {len(header)}")
      where = f"{path}, line {line_number}"
      rows.append(KeypointRow(
          image_name=fields[column["image_name"]],
          width=_field(fields, column, "width", int, where),
          height=_field(fields, column, "height", int, where),
          points=tuple(_field(fields, column, c, float, where) for c in point_columns),
          status=fields[column["status"]].strip() if "status" in column else OK,
          photo=(fields[column[PHOTO]] or None) if PHOTO in column else None))
  return rows


def relative_name(name, images_dir, where="--csv"):
  """A CSV's image name as facekp names images: relative to images_dir, '/'-separated, `./`
  dropped; an absolute path inside images_dir is made relative. A name that leads outside
  images_dir is refused: a dataset's images stay inside its folder."""
  root = posixpath.normpath(os.path.abspath(images_dir))
  if posixpath.isabs(name):
    full = posixpath.normpath(name)
  else:
    full = posixpath.normpath(posixpath.join(root, name))
  if full != root and full.startswith(root.rstrip("/") + "/"):
    return full[len(root.rstrip("/")) + 1:]
  raise ValueError(f"{where}: image name {name!r} lies outside the image folder {images_dir}: "
                   "give names relative to --images, inside it")


def relative_names(rows, images_dir, where="--csv"):
  return [row._replace(image_name=relative_name(row.image_name, images_dir, where))
          for row in rows]
