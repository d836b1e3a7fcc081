"""facekp: train five-point facial keypoint models from MediaPipe-annotated face photos."""

__version__ = "0.1.0"
