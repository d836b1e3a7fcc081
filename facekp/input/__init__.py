"""The input stage: dataset shards -> batches of uint8 images and normalised keypoints.

In: a dataset folder (facekp.core.dataset_info). Out: tf.data datasets, parsed, decoded, cached,
shuffled, batched and prefetched (input_pipeline), and keypoint-true augmentation of whole
batches that runs on the accelerator inside the train step (augment).
"""
