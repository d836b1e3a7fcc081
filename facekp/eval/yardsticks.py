"""The yardsticks every model is read against, and the perturbed protocol.

  mean shape     the model's training mean face predicted for every face (the constant
                 predictor: strong on aligned crops, where the five points sit nearly still);
  teacher floor  MediaPipe against itself: each image and its mirror annotated, the mirror's
                 points mapped back; no student can be judged finer than its labels;
  perturbed      the faces under a fixed, seeded rotation, zoom and shift (labels moved with
                 them by facekp.input.augment), where the mean shape no longer works.
"""
from absl import logging
import numpy as np
import tensorflow as tf

from facekp.core import keypoints as keypoints_lib
from facekp.core import workdir as workdir_lib
from facekp.data import face_mesh as face_mesh_lib
from facekp.eval import metrics as metrics_lib
from facekp.input import augment
from facekp.input import input_pipeline

# The perturbed protocol: fixed for every run so its figures compare across runs.
PERTURBATION = {"rotation": 20.0, "scale": 0.15, "translate": 0.08}
PERTURBATION_SEED = 20260606
# Faces MediaPipe may return per image for the teacher floor; the one at the label is used.
TEACHER_MAX_FACES = 3


# The mean shape.

def training_mean(workdir, config):
  """The model's training mean face, normalised [K, 2], and where it was read from.

  Training records it in the workdir, so a model can be scored on any dataset, even one with
  only a test split. Workdirs trained before that have none: then it is recomputed from the
  train split of the dataset the workdir's config names, and a warning says so.
  """
  mean = workdir_lib.read_train_mean(workdir)
  if mean is not None:
    return mean, workdir_lib.path(workdir, workdir_lib.TRAIN_MEAN)
  data_dir = config.get("data_dir")
  try:
    if not input_pipeline.num_examples(data_dir, "train"):
      raise ValueError(f"the train split of {data_dir} is empty")
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(
        f"{workdir} records no training mean ({workdir_lib.TRAIN_MEAN}) and it cannot be "
        f"recomputed from the config's data_dir: {e}. Retrain the workdir with this version of "
        "facekp, or make its training dataset available at that path") from None
  logging.warning("%s has no %s (trained by an older facekp): the mean shape is recomputed from "
                  "the train split of %s", workdir, workdir_lib.TRAIN_MEAN, data_dir)
  return input_pipeline.train_mean_keypoints(data_dir), f"{data_dir} train split"


# The teacher floor.

def _nearest_face(faces, target_px):
  """The detected face whose points lie nearest the target points, or None."""
  if not faces:
    return None
  return min(faces, key=lambda points: np.linalg.norm(points - target_px, axis=-1).mean())


def teacher_pairs(images, keypoints, schema):
  """MediaPipe's points on each image and on its mirror (mapped back), in pixels [M, K, 2].

  Where MediaPipe finds several faces, the one nearest the labelled face is taken, on the image
  and on its mirror alike. Returns (points, mirrored_points_mapped_back, kept) where kept
  indexes the M images on which the face was found both ways.
  """
  mesh = list(schema.mesh_indices)
  flip = schema.flip_permutation
  direct, back, kept = [], [], []
  with face_mesh_lib.FaceMesh(max_faces=TEACHER_MAX_FACES) as face_mesh:
    for i, (image, label) in enumerate(zip(images, keypoints)):
      image = np.ascontiguousarray(image, np.uint8)
      height, width = image.shape[:2]
      label_px = keypoints_lib.to_pixels(label, width, height)
      found = _nearest_face(face_mesh.detect(image, mesh), label_px)
      found_mirror = _nearest_face(face_mesh.detect(image[:, ::-1], mesh),
                                   keypoints_lib.mirror(label_px, flip, width))
      if (i + 1) % 1000 == 0:
        logging.info("teacher floor: %d / %d images annotated", i + 1, len(images))
      if found is None or found_mirror is None:
        continue
      direct.append(found)
      back.append(keypoints_lib.mirror(found_mirror, flip, width))
      kept.append(i)
  shape = (-1, len(mesh), 2)
  return (np.array(direct).reshape(shape), np.array(back).reshape(shape),
          np.array(kept, np.int64))


def teacher_floor(images, keypoints, schema, huber_delta):
  """Teacher floor metrics on these images and its per-image NME (None if no face was found)."""
  size = images.shape[1]
  direct, back, kept = teacher_pairs(images, keypoints, schema)
  left_out = len(images) - len(kept)
  if left_out:
    logging.warning("teacher floor: MediaPipe found no face on %d of %d images (or their "
                    "mirrors); they are left out of the floor", left_out, len(images))
  if not len(kept):
    return None, None
  floor = metrics_lib.keypoint_metrics(
      keypoints_lib.to_normalised(back, size), keypoints_lib.to_normalised(direct, size), size,
      schema.names, schema.eye_slots, huber_delta)
  floor["num_left_out"] = int(left_out)
  nme = (metrics_lib.nme_per_image(back, direct, schema.eye_slots)
         if schema.eye_slots is not None else None)
  return floor, nme


# The perturbed protocol.

def perturb(images, keypoints, flip_permutation, batch_size=256):
  """The fixed perturbed copy of the faces: same seed, same warp, every run."""
  config = augment.make_config(**PERTURBATION)
  out_images, out_keypoints = [], []
  for i in range(0, len(images), batch_size):
    seed = tf.constant([PERTURBATION_SEED, i // batch_size], tf.int64)
    warped, moved = augment.augment_batch(
        tf.convert_to_tensor(images[i:i + batch_size]),
        tf.convert_to_tensor(keypoints[i:i + batch_size], tf.float32),
        config, seed, flip_permutation)
    out_images.append(np.clip(np.round(warped.numpy()), 0, 255).astype(np.uint8))
    out_keypoints.append(moved.numpy().astype(np.float32))
  return np.concatenate(out_images), np.concatenate(out_keypoints)


def perturbation():
  """The perturbed protocol's parameters, as metrics.json records them."""
  return dict(PERTURBATION, seed=PERTURBATION_SEED)
