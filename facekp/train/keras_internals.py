"""The Keras and TensorFlow internals training relies on, in one place (checked: keras 3.15.1,
tensorflow 2.19.1); tests/test_train.py fails when the pinned versions no longer have them.

- Model._symbolic_build: fit builds a model by reducing a real input batch over every worker just
  to learn its shapes, and `strategy.reduce` of a PerReplica fails across workers
  (keras-team/keras#20585); KeypointTrainer overrides Model._maybe_symbolic_build to build from
  zero arrays of known shapes instead.
- saving_lib.H5IOStore and saving_lib._save_state: save_weights' .weights.h5 content built in
  memory. HDF5 writing a file itself fails half-way on a full disk with the file left open, and
  the process then dies with a segmentation fault when that file is flushed again (h5py 3).
- MultiWorkerMirroredStrategy.extended._in_multi_worker_mode: whether a strategy really spans
  several workers (a one-worker cluster runs as a local strategy).
"""
# pylint: disable=protected-access
import io

import keras
from keras.src.saving import saving_lib

CHECKED_VERSIONS = {"keras": "3.15.1", "tensorflow": "2.19.1"}
MISSING = [name for name, found in (
    ("keras.Model._symbolic_build", hasattr(keras.Model, "_symbolic_build")),
    ("keras.Model._maybe_symbolic_build", hasattr(keras.Model, "_maybe_symbolic_build")),
    ("saving_lib.H5IOStore", hasattr(saving_lib, "H5IOStore")),
    ("saving_lib._save_state", hasattr(saving_lib, "_save_state"))) if not found]


def build_from_example(model, example):
  """Builds a compiled model's metrics and optimizer as fit would, from `example` (x, y)."""
  model._symbolic_build(data_batch=example)


def weights_h5_bytes(model):
  """model.save_weights' .weights.h5 content, built in memory."""
  buffer = io.BytesIO()
  store = saving_lib.H5IOStore(buffer, mode="w")
  saving_lib._save_state(
      model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
  store.close()
  return buffer.getvalue()


def in_multi_worker_mode(strategy):
  """Whether a MultiWorkerMirroredStrategy spans several workers."""
  return strategy.extended._in_multi_worker_mode()
