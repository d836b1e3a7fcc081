r"""Turns a folder of face photos into an annotated TFDS dataset of TFRecord shards.

  python -m tools.make_tfrecords --images=PATH/TO/ffhq128 --out=data/ffhq128_kp
  python -m tools.make_tfrecords --images=PATH/TO/photos --out=data/photos_kp --align=128

The command facekp-make-tfrecords of an installed facekp, from a checkout: its flags and stages
are facekp.data.make_tfrecords's.
"""
from facekp.data import make_tfrecords

if __name__ == "__main__":
  make_tfrecords.run()
