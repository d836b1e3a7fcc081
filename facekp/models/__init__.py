"""Keypoint models: images in [0, 255] -> float32 keypoints [B, K, 2] normalised to [0, 1].

A backbone by name (keras.applications or facekp's small U-Net) with a regression or
soft-argmax head (keypoint_model), and test-time flip averaging as layers (flip_tta).
"""
