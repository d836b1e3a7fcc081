"""facekp.core.images: every stored form becomes the same RGB pixels; bad files give a reason."""
import os
import struct
import zlib

import cv2
import numpy as np
from PIL import Image
import pytest

from facekp.core import files
from facekp.core import images
from conftest import encode


def test_list_images_is_recursive_sorted_and_filtered(image_folder, image_files):
  os.makedirs(os.path.join(image_folder, "UPPER"))
  with open(os.path.join(image_folder, "UPPER", "SHOUT.JPG"), "wb") as f:
    f.write(b"")
  assert images.list_images(image_folder) == sorted(list(image_files) + ["UPPER/SHOUT.JPG"])


def test_listing_follows_each_real_file_once(tmp_path, astronaut):
  """Link loops, a second link to a file, the output folder inside the input, a FIFO and a
  name that is not UTF-8 are skipped (and said); a name with a trailing space is listed."""
  root = tmp_path / "photos"
  (root / "sub").mkdir(parents=True)
  png = encode(astronaut[:8, :8], "PNG")
  for name in ("a.png", "sub/b.png", "c.png "):
    (root / name).write_bytes(png)
  os.symlink("..", root / "sub" / "up")  # a loop
  os.symlink(root, root / "again")  # another loop, absolute
  os.symlink("a.png", root / "link.png")  # the same file under a second name
  os.mkfifo(root / "pipe.jpg")
  (root / "out" / "aligned").mkdir(parents=True)
  (root / "out" / "aligned" / "a_f0.png").write_bytes(png)
  os.symlink(root / "gone.png", root / "broken.png")
  with open(os.path.join(os.fsencode(root), b"\xff.png"), "wb") as f:
    f.write(png)
  listing = images.scan_images(str(root), exclude=[str(root / "out")])
  assert listing.names == ["a.png", "c.png ", "sub/b.png"]
  assert listing.skipped == {"link_loop": ["again", "sub/up"], "output_folder": ["out"],
                             "second_link_to_a_file": ["link.png"],
                             "not_a_regular_file": ["pipe.jpg"], "broken_link": ["broken.png"],
                             "name_not_utf8": ["'\\udcff.png'"]}
  assert images.list_images(str(root), exclude=[str(root / "out")]) == listing.names
  with pytest.raises(images.ImageError) as error:
    images.load_rgb(str(root / "pipe.jpg"))  # would block forever if opened
  assert error.value.reason == "not_a_regular_file"


def test_list_images_of_a_missing_folder_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    images.list_images(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["face.png", "face.webp", "rgba.png"])
def test_lossless_forms_give_the_original_pixels(tmp_path, image_files, astronaut, name):
  path = tmp_path / name
  path.write_bytes(image_files[name][0])
  rgb = images.load_rgb(str(path))
  assert rgb.dtype == np.uint8 and rgb.shape == astronaut.shape
  if name == "rgba.png":  # transparent corner composited over black, the rest untouched
    assert (rgb[:20, :20] == 0).all()
    np.testing.assert_array_equal(rgb[20:], astronaut[20:])
  else:
    np.testing.assert_array_equal(rgb, astronaut)


def test_grayscale_palette_and_16_bit_become_rgb(tmp_path, image_files, astronaut):
  gray = np.asarray(Image.fromarray(astronaut).convert("L"))
  for name in ["sub/deeper/gray.png", "gray16.png"]:
    path = tmp_path / os.path.basename(name)
    path.write_bytes(image_files[name][0])
    rgb = images.load_rgb(str(path))
    np.testing.assert_array_equal(rgb, np.repeat(gray[:, :, None], 3, axis=2))
  path = tmp_path / "palette.png"
  path.write_bytes(image_files["palette.png"][0])
  rgb = images.load_rgb(str(path))
  assert rgb.shape == astronaut.shape
  assert np.abs(rgb.astype(int) - astronaut).mean() < 4  # 256 colours approximate the photo


def test_16_bit_rgb_keeps_the_high_byte(tmp_path):
  rgb16 = np.random.RandomState(0).randint(0, 65536, (8, 10, 3)).astype(np.uint16)
  path = str(tmp_path / "rgb16.png")
  cv2.imwrite(path, rgb16[:, :, ::-1])
  rgb = images.load_rgb(path)
  assert np.abs(rgb.astype(int) - (rgb16 >> 8)).max() <= 1


def test_exif_orientation_is_applied_and_size_follows(tmp_path, astronaut):
  wide = astronaut[:, :200]
  exif = Image.Exif()
  exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
  path = tmp_path / "rotated.jpg"
  path.write_bytes(encode(wide, "JPEG", exif=exif.tobytes()))
  rgb = images.load_rgb(str(path))
  assert rgb.shape == (200, 256, 3)
  assert images.image_size(str(path)) == (256, 200)


@pytest.mark.parametrize("where", ["before_pixels", "after_pixels"])
def test_png_exif_orientation_is_found_wherever_the_chunk_is(tmp_path, astronaut, where):
  wide = astronaut[:, :200]
  exif = Image.Exif()
  exif[0x0112] = 6
  if where == "before_pixels":
    data = encode(wide, "PNG", exif=exif.tobytes())
  else:  # an eXIf chunk just before IEND (the last 12 bytes)
    plain = encode(wide, "PNG")
    body = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    chunk = (struct.pack(">I", len(body)) + b"eXIf" + body
             + struct.pack(">I", zlib.crc32(b"eXIf" + body)))
    data = plain[:-12] + chunk + plain[-12:]
  path = tmp_path / "rotated.png"
  path.write_bytes(data)
  assert images.load_rgb(str(path)).shape == (200, 256, 3)
  assert images.image_size(str(path)) == (256, 200)


def test_a_tiff_with_an_orientation_tag_has_one_size(tmp_path, astronaut):
  """Pillow applies a TIFF's orientation when it opens the file: the size must not turn twice."""
  exif = Image.Exif()
  exif[0x0112] = 6
  path = tmp_path / "rotated.tif"
  path.write_bytes(encode(astronaut[:, :200], "TIFF", exif=exif.tobytes()))
  height, width = images.load_rgb(str(path)).shape[:2]
  assert images.image_size(str(path)) == (width, height)


def test_transparency_is_detected(astronaut):
  rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
  assert not images.has_transparency(encode(rgba, "PNG"))
  rgba[50:150, 50:150, 3] = 0
  assert images.has_transparency(encode(rgba, "PNG"))
  assert not images.has_transparency(encode(astronaut, "JPEG"))


@pytest.mark.parametrize("name", ["empty.jpg", "notes.png", "truncated.jpg", "truncated.png",
                                  "corrupt.png"])
def test_bad_files_raise_with_their_reason(tmp_path, image_files, name):
  data, reason = image_files[name]
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(images.ImageError, match=name) as error:
    images.load_rgb(str(path))
  assert error.value.reason == reason


def test_missing_file(tmp_path):
  with pytest.raises(images.ImageError) as error:
    images.load_rgb(str(tmp_path / "gone.png"))
  assert error.value.reason == "missing"


def test_encode_png_is_lossless_and_write_atomic_leaves_no_temporary(tmp_path, astronaut):
  path = str(tmp_path / "x.png")
  files.atomic_write(path, images.encode_png(astronaut))
  np.testing.assert_array_equal(images.load_rgb(path), astronaut)
  assert os.listdir(tmp_path) == ["x.png"]
