"""facekp: train five-point facial keypoint models from MediaPipe-annotated face photos."""
import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) hides facekp's own progress.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
