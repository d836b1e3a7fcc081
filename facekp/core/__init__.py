"""The contracts every stage shares, and nothing stage-specific.

In: nothing of facekp's. Out: the keypoint coordinate convention (keypoints) and schema, the label
CSV and journal formats, a dataset folder's layout and metadata (dataset_info), a training
workdir's layout (workdir), whole-or-absent files and folder locks (files), any image file as RGB
uint8 (images), worker processes (workers), pictures (plots) and command-line plumbing (cli).
"""
