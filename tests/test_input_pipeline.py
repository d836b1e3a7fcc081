"""facekp.input.input_pipeline on tiny datasets written here: order, coverage, shuffling, caching,
sharding across input pipelines and replicas, resizing, and errors that name the bad file."""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from facekp.core import dataset_info
from facekp.core import schema as schema_lib
from facekp.data import shards as dataset_lib
from facekp.input import input_pipeline

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
SIZE = 16
# split -> examples per shard; example ids run on across splits.
LAYOUT = {"train": (7, 5), "validation": (5,), "test": (3,)}


def _example(i, height=SIZE, width=SIZE, encoding="png"):
  """Example `i`: an image whose every pixel is 7 * i (mod 256) and keypoints that encode i."""
  image = np.full((height, width, 3), (7 * i) % 256, np.uint8)
  encoded = tf.io.encode_png(image) if encoding == "png" else tf.io.encode_jpeg(image, quality=100)
  keypoints = np.full((SCHEMA.num_keypoints, 2), 0.5, np.float32)
  keypoints[0] = i / 100.0
  return {"image": encoded.numpy(), "image_name": f"face_{i:03d}.{encoding}",
          "height": height, "width": width,
          "keypoints_px": keypoints * np.float32([width, height]), "keypoints": keypoints}


def _write_dataset(out, first_id=0, sizes=None):
  """Writes LAYOUT's splits; `sizes` maps example ids to stored (height, width, encoding)."""
  os.makedirs(out, exist_ok=True)
  spec = dataset_info.features(SCHEMA.num_keypoints)
  i = first_id
  for split, shard_lengths in LAYOUT.items():
    for shard, length in enumerate(shard_lengths):
      examples = [_example(j, *(sizes or {}).get(j, ())) for j in range(i, i + length)]
      dataset_lib.write_shard(dataset_info.shard_path(out, split, shard, len(shard_lengths)),
                              examples, spec)
      i += length
  dataset_lib.write_metadata(out, spec, SCHEMA)
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  # Example 17 (test split) is stored larger and as JPEG, example 3 as a non-square PNG.
  return _write_dataset(str(tmp_path_factory.mktemp("facekp")),
                        sizes={17: (24, 24, "jpeg"), 3: (20, 12, "png")})


@pytest.fixture
def copied_dir(data_dir, tmp_path):
  return shutil.copytree(data_dir, str(tmp_path / "copy"))


def _ids(keypoints):
  return np.round(np.asarray(keypoints)[:, 0, 0] * 100).astype(int)


def _check_pairs(images, keypoints):
  """Each image still carries its own keypoints."""
  np.testing.assert_array_equal(np.asarray(images)[:, 0, 0, 0], (7 * _ids(keypoints)) % 256)


def _stream(ds, num_batches):
  images, keypoints = zip(*[(i.numpy(), k.numpy()) for i, k in ds.take(num_batches)])
  return np.concatenate(images), np.concatenate(keypoints)


def test_num_examples_come_from_the_metadata(data_dir):
  assert [input_pipeline.num_examples(data_dir, s) for s in LAYOUT] == [12, 5, 3]


def test_eval_batches_cover_the_split_once_in_order(data_dir):
  ds = input_pipeline.create_split(data_dir, "train", batch_size=5, train=False, image_size=SIZE)
  batches = [(i.numpy(), k.numpy()) for i, k in ds]
  assert [len(k) for _, k in batches] == [5, 5, 2]
  for images, keypoints in batches:
    assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
    assert keypoints.dtype == np.float32 and keypoints.shape[1:] == (SCHEMA.num_keypoints, 2)
    _check_pairs(images, keypoints)
  np.testing.assert_array_equal(np.concatenate([_ids(k) for _, k in batches]), np.arange(12))


def test_train_batches_are_full_shuffled_and_each_epoch_sees_every_example(data_dir):
  ds = input_pipeline.create_split(data_dir, "train", batch_size=5, train=True, image_size=SIZE)
  assert ds.element_spec[0].shape.as_list() == [5, SIZE, SIZE, 3]
  images, keypoints = _stream(ds, 12)  # 60 examples: five epochs of 12
  _check_pairs(images, keypoints)
  epochs = _ids(keypoints).reshape(5, 12)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(12))
  assert not np.array_equal(epochs[0], np.arange(12))
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_a_seed_repeats_the_order_and_another_seed_changes_it(data_dir):
  order = lambda seed: _ids(_stream(input_pipeline.create_split(
      data_dir, "train", batch_size=4, train=True, image_size=SIZE, seed=seed), 6)[1])
  np.testing.assert_array_equal(order(3), order(3))
  assert not np.array_equal(order(3), order(4))


def test_repeat_sets_the_number_of_passes(data_dir):
  ds = input_pipeline.create_split(data_dir, "validation", batch_size=2, train=False,
                                   image_size=SIZE, repeat=3)
  np.testing.assert_array_equal(np.sort(_ids(_stream(ds, 100)[1])), np.repeat(np.arange(12, 17), 3))
  ds = input_pipeline.create_split(data_dir, "validation", batch_size=2, train=True,
                                   image_size=SIZE, repeat=False)
  assert len(_stream(ds, 100)[1]) == 4  # one pass, full batches only


@pytest.fixture
def decode_calls(monkeypatch):
  """Counts the images the pipeline really decodes (a counter inside its decode function)."""
  calls = []
  decode = input_pipeline.decode

  def counting_decode(encoded, image_size, pixels_shape=None):
    image = tf.numpy_function(lambda im: (calls.append(1), im)[1],
                              [decode(encoded, image_size, pixels_shape)], tf.uint8,
                              stateful=True)
    return tf.ensure_shape(image, [image_size, image_size, 3])

  monkeypatch.setattr(input_pipeline, "decode", counting_decode)
  return calls


def test_memory_cache_decodes_each_image_once_across_epochs(data_dir, decode_calls):
  ds = input_pipeline.create_split(data_dir, "train", batch_size=4, train=True, image_size=SIZE)
  _check_pairs(*_stream(ds, 12))  # four epochs
  assert len(decode_calls) == 12
  uncached = input_pipeline.create_split(data_dir, "train", batch_size=4, train=True,
                                         image_size=SIZE, cache=False)
  _stream(uncached, 12)
  assert len(decode_calls) >= 12 + 48  # (and a few read ahead)


def test_file_cache_is_read_by_the_next_run_and_renewed_when_shards_change(
    copied_dir, tmp_path, decode_calls):
  cache = str(tmp_path / "cache")
  make = lambda: input_pipeline.create_split(copied_dir, "validation", batch_size=5, train=True,
                                             image_size=SIZE, cache=cache)
  first = _ids(_stream(make(), 3)[1])
  assert len(decode_calls) == 5
  second = _ids(_stream(make(), 3)[1])
  assert len(decode_calls) == 5  # served from the cache files
  np.testing.assert_array_equal(np.sort(first), np.sort(second))
  _write_dataset(copied_dir, first_id=50)  # the same layout, other images
  rewritten = _ids(_stream(make(), 3)[1])
  assert len(decode_calls) == 10
  np.testing.assert_array_equal(np.sort(rewritten[:5]), np.arange(62, 67))


def test_images_of_another_size_are_resized_with_keypoints_unchanged(data_dir):
  arrays = input_pipeline.load_arrays(data_dir, "test", image_size=SIZE)
  assert arrays["images"].shape == (3, SIZE, SIZE, 3)
  np.testing.assert_array_equal(_ids(arrays["keypoints"]), [17, 18, 19])
  assert np.abs(arrays["images"][0].astype(int) - (7 * 17) % 256).max() <= 1  # was 24x24 JPEG
  train = input_pipeline.load_arrays(data_dir, "train", image_size=8)
  assert train["images"].shape == (12, 8, 8, 3)
  _check_pairs(train["images"], train["keypoints"])  # includes the 20x12 image
  np.testing.assert_allclose(train["keypoints"][3, 1:], 0.5)


def test_load_arrays_returns_the_split_in_stored_order(data_dir):
  arrays = input_pipeline.load_arrays(data_dir, "validation", image_size=SIZE)
  assert arrays["images"].dtype == np.uint8 and arrays["keypoints"].dtype == np.float32
  assert list(arrays["image_names"]) == [f"face_{i:03d}.png" for i in range(12, 17)]
  _check_pairs(arrays["images"], arrays["keypoints"])


@pytest.mark.parametrize("split,expected", [("train", 12), ("validation", 5)])
def test_input_pipelines_split_the_examples_between_them(data_dir, split, expected):
  """Two pipelines (2 shards: one file each; 1 shard: every other record) read disjoint halves;
  each batches its replica's share of the global batch."""
  seen = []
  for index in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=index,
                                         num_replicas_in_sync=2)
    ds = input_pipeline.create_split(data_dir, split, batch_size=4, train=False,
                                     image_size=SIZE, input_context=context)
    sizes = [len(k) for _, k in ds]
    assert max(sizes) == 2
    seen.extend(_ids(_stream(ds, 100)[1]))
  assert sorted(seen) == list(range(min(seen), min(seen) + expected))


def test_two_logical_devices_each_replica_gets_half_the_global_batch(data_dir):
  # A fresh process: logical devices must be configured before TensorFlow initialises.
  script = textwrap.dedent(f"""
      import numpy as np
      import tensorflow as tf
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
      from facekp.input import input_pipeline
      strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
      ds = input_pipeline.distributed_dataset(strategy, {data_dir!r}, "train",
                                              global_batch_size=8, train=True, image_size={SIZE})
      images, keypoints = next(iter(ds))
      shapes = [tuple(t.shape) for t in strategy.experimental_local_results(images)]
      assert shapes == [(4, {SIZE}, {SIZE}, 3)] * 2, shapes
      ds = input_pipeline.distributed_dataset(strategy, {data_dir!r}, "train",
                                              global_batch_size=8, train=False, image_size={SIZE})
      ids = []
      for _, keypoints in ds:
        for part in strategy.experimental_local_results(keypoints):
          ids.extend(np.round(part.numpy()[:, 0, 0] * 100).astype(int))
      assert sorted(ids) == list(range(12)), ids
      print("OK")
      """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
  assert result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_a_directory_that_is_not_a_facekp_dataset_is_named(tmp_path, copied_dir):
  with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path))} is not a facekp"):
    input_pipeline.create_split(str(tmp_path), "train", batch_size=2, train=True)
  os.remove(os.path.join(copied_dir, dataset_info.SCHEMA_FILE))
  with pytest.raises(FileNotFoundError, match="schema.json is missing"):
    input_pipeline.num_examples(copied_dir, "train")


def test_an_unknown_split_lists_the_splits(data_dir):
  with pytest.raises(ValueError, match=r"no split 'valid'.*'test', 'train', 'validation'"):
    input_pipeline.create_split(data_dir, "valid", batch_size=2, train=False)


def test_a_missing_shard_is_named(copied_dir):
  shard = dataset_info.shard_path(copied_dir, "train", 1, 2)
  os.remove(shard)
  with pytest.raises(FileNotFoundError, match=f"{re.escape(shard)}: shard listed in dataset_"):
    input_pipeline.create_split(copied_dir, "train", batch_size=2, train=True)


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "drop_record"])
def test_a_corrupt_shard_is_named(copied_dir, damage):
  shard = dataset_info.shard_path(copied_dir, "train", 0, 2)
  data = open(shard, "rb").read()
  if damage == "truncate":
    data = data[:len(data) // 2]
  elif damage == "flip_bytes":
    data = data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:]
  else:
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard).take(6)]
    with tf.io.TFRecordWriter(shard) as writer:
      for record in records:
        writer.write(record)
    data = open(shard, "rb").read()
  with open(shard, "wb") as f:
    f.write(data)
  expected = "holds 6 records, dataset_info.json says 7" if damage == "drop_record" else "corrupt"
  with pytest.raises(ValueError, match=f"{re.escape(shard)}: {expected}"):
    input_pipeline.load_arrays(copied_dir, "train")
  with pytest.raises(ValueError, match=f"{re.escape(shard)}: {expected}"):  # as training reads
    with input_pipeline.naming_damaged_records(copied_dir, ("train", "validation")):
      ds = input_pipeline.create_split(copied_dir, "train", batch_size=2, train=True, repeat=2)
      for _ in ds:
        pass
