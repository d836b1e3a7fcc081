"""Serving: a trained workdir -> exported models, and exported models -> points on any photo.

In: a workdir. Out: SavedModel and TFLite files checked against the Keras model (export), the
readers of every format (loading), and prediction on ordinary photos: find each face, crop it as
the training data was cropped, predict, map the points back to the photo (predict).
"""
