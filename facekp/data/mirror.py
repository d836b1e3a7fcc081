"""Mirror partners of Face Mesh landmarks, derived by running Face Mesh on mirrored faces.

A schema's flip permutation (facekp.core.schema) comes from here, never typed by hand.
"""

import numpy as np
import scipy.optimize

from facekp.core import images
from facekp.core import keypoints
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.data import align
from facekp.data import face_mesh

_MAX_SAMPLE_FACES = 10
_SAME_FACE_OFFSET = 0.5  # eye distances; two different faces lie several apart


def sample_images():
  """The committed sample faces (facekp/sample), as RGB arrays."""
  return [images.load_rgb(path) for path in sample.sample_photos()]


def _mirror_distances(mesh, image):
  """Per face of `image`: [468, 468] distances from landmark i to mirror landmark j mapped
  back (x -> W - x), in units of the distance between the eye centres."""
  faces = mesh.detect(image)
  mirrored = mesh.detect(image[:, ::-1])
  backs = [keypoints.mirror(m, range(len(m)), image.shape[1]) for m in mirrored]
  for points in faces:
    eye_distance = np.linalg.norm(
        points[align.LEFT_EYE].mean(axis=0) - points[align.RIGHT_EYE].mean(axis=0))
    # The same face in the mirror: the one whose mapped-back centre is nearest.
    offsets = [np.linalg.norm(back.mean(axis=0) - points.mean(axis=0)) for back in backs]
    if offsets and min(offsets) < _SAME_FACE_OFFSET * eye_distance:
      back = backs[int(np.argmin(offsets))]
      yield np.linalg.norm(points[:, None] - back[None], axis=-1) / eye_distance


def derive_mirror_indices(mesh_indices, images_rgb=None):
  """For each Face Mesh index, the index that takes its place when the face is mirrored.

  Runs Face Mesh on each face (default: the sample faces) and on its horizontal mirror, maps
  the mirror's landmarks back and matches them to the original's. The nearest landmark alone is
  ambiguous (MediaPipe's mirrored mouth corner 61 lands nearer 306 than 291 on most faces), so
  the match is the one-to-one assignment of all 468 landmarks with the least total distance.
  """
  distances = []
  with face_mesh.FaceMesh(max_faces=_MAX_SAMPLE_FACES) as mesh:
    for image in sample_images() if images_rgb is None else images_rgb:
      distances.extend(_mirror_distances(mesh, image))
  if not distances:
    raise ValueError("Face Mesh found no face in the images given to derive mirror partners")
  cost = np.mean(distances, axis=0)
  _, partner = scipy.optimize.linear_sum_assignment(cost + cost.T)
  mirror = {i: int(partner[i]) for i in mesh_indices}
  for i, j in mirror.items():
    if j not in mirror:
      raise ValueError(f"the mirror partner of Face Mesh index {i} is {j}, which the selected "
                       f"landmarks {tuple(mesh_indices)} do not include: add it, so that a "
                       "horizontal flip can swap them")
    if mirror[j] != i:
      raise ValueError(f"mirror partners are not symmetric among {tuple(mesh_indices)}: "
                       f"{i} -> {j} but {j} -> {mirror[j]}")
  return tuple(mirror[i] for i in mesh_indices)


def make_schema(mesh_indices=schema_lib.DEFAULT_MESH_INDICES, images_rgb=None):
  return schema_lib.Schema(mesh_indices, derive_mirror_indices(mesh_indices, images_rgb))
