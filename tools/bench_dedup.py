r"""Benchmarks duplicate detection: facekp.data.dedup's hash index against comparing all pairs.

  python -m tools.bench_dedup [--images=DIR] [--hashes=70000] [--all_pairs=5000] [--json=FILE]

The hashes: the perceptual hashes of the real faces in --images, then synthetic ones up to
--hashes, two kinds: "uniform" (every bit a coin toss) and "face-like" (bit k set with the
frequency it has among the real faces' hashes, the harder case for an index: the DCT's low
frequencies of aligned faces agree more often than chance). Both sets also hold near copies of
the real hashes (8-40 bits away). The old all-pairs count (blocks of 256 rows against all) runs
on the first --all_pairs hashes, the index on the same ones (same pairs checked) and on all.
"""
import json
import time

from facekp.core import cli  # first: quiets the C++ start-up lines of TensorFlow and MediaPipe
from absl import flags
import numpy as np

from facekp.core import images
from facekp.data import cleaning
from facekp.data import dedup
import tools

FLAGS = flags.FLAGS

flags.DEFINE_string("images", tools.SHARED_FACES, "Folder of real face images to hash.")
flags.DEFINE_integer("hashes", 70000, "Hashes in the large set.")
flags.DEFINE_integer("all_pairs", 5000, "Hashes for the all-pairs comparison.")
flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def all_pairs(hashes, max_distance, block=256):
  """The previous rule: every pair compared, in blocks. Returns the pairs found."""
  bits = dedup.hash_bits(hashes)
  found = []
  for start in range(0, len(bits), block):
    distances = _POPCOUNT[bits[start:start + block, None] ^ bits[None]].sum(-1, dtype=np.int32)
    i, j = np.nonzero(distances <= max_distance)
    keep = start + i < j
    found.append(np.stack([start + i[keep], j[keep]], axis=1))
  return np.concatenate(found)


def synthetic(real, count, kind, rng):
  """Real hashes, their near copies (one per real hash), then random hashes up to count."""
  real_bits = np.unpackbits(dedup.hash_bits(real), axis=1)
  near = real_bits.copy()
  for row, distance in zip(near, rng.integers(8, 41, len(near))):
    row[rng.choice(row.size, distance, replace=False)] ^= 1
  frequency = real_bits.mean(axis=0) if kind == "face-like" else np.full(real_bits.shape[1], 0.5)
  rest = (rng.random((count - 2 * len(real), real_bits.shape[1])) < frequency).astype(np.uint8)
  rows = np.packbits(np.concatenate([real_bits, near, rest]), axis=1)
  return [row.tobytes().hex() for row in rows]


def timed(function, *args):
  start = time.perf_counter()
  result = function(*args)
  return time.perf_counter() - start, result


def main(argv):
  del argv
  names = images.list_images(FLAGS.images)
  real = sorted({cleaning.read_image(f"{FLAGS.images}/{name}")[1][2] for name in names})
  distance = dedup.PHASH_MAX_DISTANCE
  print(f"{len(real)} distinct perceptual hashes of the {len(names)} faces in {FLAGS.images}; "
        f"pairs within {distance} bits")
  figures = {"images": FLAGS.images, "real_hashes": len(real), "max_distance": distance}
  for kind in ("uniform", "face-like"):
    hashes = synthetic(real, FLAGS.hashes, kind, np.random.default_rng(0))
    small = hashes[:FLAGS.all_pairs]
    old_seconds, old = timed(all_pairs, small, distance)
    new_seconds, new = timed(dedup.near_pairs, small, distance)
    assert sorted(map(tuple, old.tolist())) == sorted(map(tuple, new.tolist()))
    big_seconds, big = timed(dedup.near_pairs, hashes, distance)
    print(f"  {kind:<9} {len(small):6d} hashes: all pairs {old_seconds:7.2f} s, index "
          f"{new_seconds:6.3f} s ({old_seconds / new_seconds:5.1f}x), the same {len(new)} pairs")
    print(f"  {kind:<9} {len(hashes):6d} hashes: index {big_seconds:6.2f} s, {len(big)} pairs "
          f"(all pairs, at its n^2: ~{old_seconds * (len(hashes) / len(small)) ** 2:.0f} s)")
    figures[kind] = {"small_hashes": len(small), "all_pairs_s": round(old_seconds, 3),
                     "index_small_s": round(new_seconds, 4), "pairs_small": len(new),
                     "hashes": len(hashes), "index_s": round(big_seconds, 3), "pairs": len(big)}
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
