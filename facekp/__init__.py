"""facekp: train five-point facial keypoint models from MediaPipe-annotated face photos.

The Python API (facekp.api) is reached from here, loaded on first use so that `import facekp`
imports neither TensorFlow, Keras nor MediaPipe:

  load, Predictor, Face, Crop   keypoints on photos (a workdir, export or model file)
  sample_photo                  the path of a photo that ships with facekp
  make_dataset, train_model, evaluate_model, export_model   the stages, as the command lines run
"""
import importlib
import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides facekp's own progress.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_API = ("load", "Predictor", "Face", "Crop", "sample_photo", "make_dataset", "train_model",
        "evaluate_model", "export_model")
__all__ = [*_API, "__version__"]


def __getattr__(name):
  if name in _API:
    return getattr(importlib.import_module("facekp.api"), name)
  raise AttributeError(f"module 'facekp' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *_API})
