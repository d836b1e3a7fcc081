"""The built-in sample photos (facekp/sample, with their sources and licences in SOURCES.md)."""
import os

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample")


def sample_photos():
  """The paths of the sample photos, sorted."""
  return [os.path.join(SAMPLE_DIR, name) for name in sorted(os.listdir(SAMPLE_DIR))
          if name.endswith(".jpg")]
