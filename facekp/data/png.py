"""PNG chunk reading: which files TensorFlow decodes to the pixels Pillow gave, without decoding."""
import struct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Chunks that leave an 8-bit RGB PNG's pixels as stored. Not text: Pillow takes an orientation
# from an XMP or "Raw profile type exif" text chunk as from eXIf, and TensorFlow takes none.
_PLAIN_PNG_CHUNKS = {b"IHDR", b"IDAT", b"pHYs", b"tIME"}


def is_plain_rgb_png(data):
  """Whether PNG bytes hold 8-bit RGB and only chunks that no decoder turns into other pixels
  (no transparency, palette, orientation, animation, colour profile or text): PNG is lossless, so
  TensorFlow gives the pixels Pillow gave, and the check costs microseconds, not a decode."""
  if not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x02":
    return False
  offset = len(PNG_MAGIC)
  while offset + 8 <= len(data):
    length, kind = struct.unpack(">I4s", data[offset:offset + 8])
    if kind == b"IEND":
      return True
    if kind not in _PLAIN_PNG_CHUNKS:
      return False
    offset += 12 + length  # length, type, data, CRC
  return False


def png_size(data):
  """(width, height) from a PNG's IHDR."""
  return struct.unpack(">II", data[16:24])
