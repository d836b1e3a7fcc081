"""Any image file -> RGB uint8 array, or an ImageError saying why not.

Every stage that looks at pixels (annotation, alignment, dataset writing, prediction) loads
images through `load_rgb`, so keypoints always refer to the same pixels: EXIF orientation
applied, alpha composited over black, grayscale / palette / 16-bit converted to 8-bit RGB.
"""
import collections
import io
import os
import stat
import typing

from absl import logging
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
import tensorflow as tf

from facekp.core import files

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                    ".pgm", ".ppm", ".pbm", ".pnm")


class ImageError(Exception):
  """An image that cannot be used; `.reason` is a short code for CSVs and reports."""

  def __init__(self, path, reason, detail=""):
    super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
    self.path = path
    self.reason = reason


class Listing(typing.NamedTuple):
  names: list  # sorted '/'-separated names relative to the root
  skipped: dict  # reason -> [names as Python writes them]


def _walk_local(root, exclude):
  """Image files under a local root, following symbolic links but every real folder and file
  once (by device and inode): a link loop or a second link to a file is skipped, as are the
  folders in `exclude` (an output folder inside the input), files that are not regular files
  (FIFOs, sockets, devices: reading one would hang or never end) and names that are not
  UTF-8 (they could not be written to a CSV)."""
  excluded = {os.path.realpath(e) for e in exclude}
  seen_dirs, seen_files = set(), set()
  names, skipped = [], collections.defaultdict(list)
  for folder, dirs, file_names in os.walk(root, followlinks=True):
    rel = os.path.relpath(folder, root)
    st = os.stat(folder)
    if (st.st_dev, st.st_ino) in seen_dirs or os.path.realpath(folder) in excluded:
      skipped["link_loop" if (st.st_dev, st.st_ino) in seen_dirs else "output_folder"].append(
          rel)
      dirs[:] = []
      continue
    seen_dirs.add((st.st_dev, st.st_ino))
    dirs.sort()
    for file_name in sorted(file_names):
      if not file_name.rstrip().lower().endswith(IMAGE_EXTENSIONS):
        continue
      name = file_name if rel == "." else f"{rel}/{file_name}".replace(os.sep, "/")
      try:
        name.encode("utf-8")
        st = os.stat(os.path.join(folder, file_name))
      except UnicodeEncodeError:
        skipped["name_not_utf8"].append(ascii(name))
        continue
      except OSError:
        skipped["broken_link"].append(name)
        continue
      if not stat.S_ISREG(st.st_mode):
        skipped["not_a_regular_file"].append(name)
      elif (st.st_dev, st.st_ino) in seen_files:
        skipped["second_link_to_a_file"].append(name)
      else:
        seen_files.add((st.st_dev, st.st_ino))
        names.append(name)
  return Listing(sorted(names), dict(skipped))


def scan_images(root, exclude=()):
  """The image files under `root` (recursive, by extension) and what was skipped, and why."""
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
  root = root.rstrip("/") or "/"
  if files.is_local(root):
    return _walk_local(root, exclude)
  names = []
  for folder, _, file_names in tf.io.gfile.walk(root):
    rel = folder[len(root):].strip("/")
    names.extend(f"{rel}/{f}" if rel else f for f in file_names
                 if f.rstrip().lower().endswith(IMAGE_EXTENSIONS))
  return Listing(sorted(names), {})


def list_images(root, exclude=()):
  """Image files under `root` as sorted '/'-separated relative names; logs what was skipped."""
  listing = scan_images(root, exclude)
  for reason, names in sorted(listing.skipped.items()):
    logging.warning("%s: skipped %d %s: %s", root, len(names), reason.replace("_", " "),
                    ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""))
  return listing.names


def read_bytes(path):
  if files.is_local(path):
    try:
      if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImageError(path, "not_a_regular_file", "a FIFO, socket, device or folder")
      with open(path, "rb") as f:  # cheaper than tf.io.gfile (docs/engineering.md)
        return f.read()
    except FileNotFoundError:
      raise ImageError(path, "missing", "no such file") from None
    except OSError as e:
      raise ImageError(path, "unreadable", str(e)) from None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError:
    raise ImageError(path, "missing", "no such file") from None
  except (tf.errors.OpError, OSError) as e:
    raise ImageError(path, "unreadable", str(e)) from None


def _decode_failure(error):
  return "truncated" if "truncated" in str(error).lower() else "corrupt"


def _open(data, path):
  if not data:
    raise ImageError(path, "empty", "zero bytes")
  try:
    return Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise ImageError(path, "not_an_image", "not a format Pillow can read") from None
  except Image.DecompressionBombError as e:
    raise ImageError(path, "too_large", str(e)) from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ImageError(path, _decode_failure(e), str(e)) from None


def over_black(rgba):
  """uint8 RGBA [H, W, 4] -> uint8 RGB [H, W, 3], composited over black: what decoders that drop
  alpha show when transparent pixels are black."""
  rgba = np.asarray(rgba, dtype=np.uint16)
  return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)


def pil_to_rgb(image):
  """Any Pillow image (any mode) -> uint8 [H, W, 3], its pixels as stored (no EXIF rotation)."""
  if image.mode in ("I", "F") or image.mode.startswith("I;16"):
    # 16-bit (or wider) grayscale: Pillow's convert("L") clips, so scale 0..65535 to 0..255.
    wide = np.asarray(image, dtype=np.float64)
    gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
  if has_alpha:
    return over_black(image.convert("RGBA"))
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def array_to_rgb(array):
  """A uint8 image array -> uint8 [H, W, 3], as load_rgb converts files: grayscale [H, W] or
  [H, W, 1] repeated into three channels, RGBA [H, W, 4] composited over black (over_black).
  Raises ValueError, on one line, for another dtype or shape: floats are not guessed at (0..1 or
  0..255?), convert them first."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"an image array must be uint8 (0..255), not {array.dtype}: convert it "
                     "first, e.g. np.clip(np.round(x * 255), 0, 255).astype(np.uint8) for 0..1")
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
    raise ValueError(f"an image array must be [H, W] (gray), [H, W, 1], [H, W, 3] (RGB) or "
                     f"[H, W, 4] (RGBA) with H, W > 0, not of shape {list(array.shape)}")
  if array.shape[2] == 1:
    return np.ascontiguousarray(np.repeat(array, 3, axis=2))
  if array.shape[2] == 4:
    return over_black(array)
  return np.ascontiguousarray(array)


def decode_rgb(data, path="<bytes>"):
  """Encoded image bytes -> uint8 [H, W, 3] (first frame of an animation)."""
  image = _open(data, path)
  try:
    image.load()
    image = ImageOps.exif_transpose(image)
    rgb = pil_to_rgb(image)
  except Image.DecompressionBombError as e:
    raise ImageError(path, "too_large", str(e)) from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise ImageError(path, _decode_failure(e), str(e)) from None
  if rgb.shape[0] == 0 or rgb.shape[1] == 0:
    raise ImageError(path, "corrupt", f"image of size {rgb.shape[1]}x{rgb.shape[0]}")
  return np.ascontiguousarray(rgb)


def load_rgb(path):
  """The image at `path` as uint8 [H, W, 3]; raises ImageError with a reason code."""
  return decode_rgb(read_bytes(path), path)


def image_size(path):
  """(width, height) of the image `load_rgb` returns: its decoded pixels' size, so that every
  format's orientation tags (EXIF, TIFF's own) count exactly as they do for the pixels."""
  height, width = load_rgb(path).shape[:2]
  return width, height


def has_transparency(data):
  """Whether encoded image bytes have transparent pixels (shown black by load_rgb)."""
  try:
    image = Image.open(io.BytesIO(data))
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
      return False
    return bool(np.asarray(image.convert("RGBA"))[:, :, 3].min() < 255)
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
    return False


def encode_png(rgb):
  """Lossless PNG bytes of a uint8 [H, W, 3] RGB array."""
  import cv2  # pylint: disable=g-import-not-at-top  (training reads datasets without OpenCV)
  ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise ValueError(f"PNG encoding failed for an array of shape {rgb.shape}")
  return encoded.tobytes()
