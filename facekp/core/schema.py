"""The keypoint schema: which Face Mesh landmarks are predicted, and how they mirror.

Every stage imports this module. The coordinate convention and the flip itself are
facekp.core.keypoints'.
"""
import dataclasses
import numbers

from facekp.core import files

DEFAULT_MESH_INDICES = (1, 33, 61, 263, 291)
NUM_MESH_LANDMARKS = 468  # Face Mesh's landmarks: indices 0..467

# Names read off MediaPipe's output on frontal faces; "left"/"right" are the subject's own,
# so the subject's right eye is on the image's left.
LANDMARK_NAMES = {
    1: "nose_tip",
    33: "right_eye_outer",
    61: "right_mouth_corner",
    263: "left_eye_outer",
    291: "left_mouth_corner",
}


@dataclasses.dataclass(frozen=True)
class Schema:
  """Face Mesh indices of the K slots and, for each slot, the index of its mirror partner.

  `mirror_indices` is derived from MediaPipe itself (facekp.data.mirror.derive_mirror_indices),
  never typed by hand; the flip permutation follows from it.
  """

  mesh_indices: tuple
  mirror_indices: tuple

  def __post_init__(self):
    object.__setattr__(self, "mesh_indices", tuple(int(i) for i in self.mesh_indices))
    object.__setattr__(self, "mirror_indices", tuple(int(i) for i in self.mirror_indices))
    if len(set(self.mesh_indices)) != len(self.mesh_indices):
      raise ValueError(f"duplicate mesh indices in {self.mesh_indices}")
    if len(self.mirror_indices) != len(self.mesh_indices):
      raise ValueError("mirror_indices must give one partner per slot")
    missing = sorted(set(self.mirror_indices) - set(self.mesh_indices))
    if missing:
      raise ValueError(
          f"the mirror partners {missing} of the selected landmarks are not selected; "
          "a horizontal flip needs every slot's partner among the slots")

  @property
  def num_keypoints(self):
    return len(self.mesh_indices)

  @property
  def names(self):
    return tuple(LANDMARK_NAMES.get(i, f"mesh_{i}") for i in self.mesh_indices)

  @property
  def flip_permutation(self):
    """Slot j of a flipped face holds what slot flip_permutation[j] held before the flip."""
    return tuple(self.mesh_indices.index(m) for m in self.mirror_indices)

  @property
  def eye_slots(self):
    """Slots of the outer eye corners (inter-ocular distance for NME), or None."""
    if 33 in self.mesh_indices and 263 in self.mesh_indices:
      return self.mesh_indices.index(33), self.mesh_indices.index(263)
    return None

  @property
  def csv_point_columns(self):
    """The seed's column names: point_1_x, point_1_y, ..., point_K_y."""
    return tuple(f"point_{k + 1}_{axis}" for k in range(self.num_keypoints) for axis in "xy")

  def to_dict(self):
    return {"mesh_indices": list(self.mesh_indices), "mirror_indices": list(self.mirror_indices),
            "names": list(self.names), "flip_permutation": list(self.flip_permutation)}

  @classmethod
  def from_dict(cls, d, where="the keypoint schema"):
    """The schema of a to_dict() record; a ValueError naming `where` (the file it was read
    from) when the record is not one."""
    if not isinstance(d, dict):
      raise ValueError(f"{where}: must be a JSON object with mesh_indices and mirror_indices, "
                       f"not {files.json_type(d)}")
    for key in ("mesh_indices", "mirror_indices"):
      value = d.get(key)
      if not isinstance(value, list) or not value or not all(map(_is_mesh_index, value)):
        raise ValueError(f"{where}: {key} must be a non-empty list of Face Mesh indices "
                         f"(integers 0..{NUM_MESH_LANDMARKS - 1}), not {_short(value)}")
    try:
      return cls(d["mesh_indices"], d["mirror_indices"])
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None

  def save(self, path):
    files.write_json(path, self.to_dict())

  @classmethod
  def load(cls, path, remedy="delete it (or write it again) and run again"):
    """The schema in a schema.json; a ValueError naming the file and saying `remedy` when the
    file holds no schema."""
    record = files.read_json(path, "keypoint schema", expect=dict, remedy=remedy)
    try:
      return cls.from_dict(record, path)
    except ValueError as e:
      raise ValueError(f"{e}; {remedy}") from None


def _is_mesh_index(value):
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and 0 <= value < NUM_MESH_LANDMARKS)


def _short(value):
  text = "nothing" if value is None else repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def check_mesh_indices(indices, flag="landmarks"):
  """`indices` as a tuple when they are distinct Face Mesh indices, else a ValueError naming the
  flag."""
  indices = tuple(indices)
  if not indices or not all(map(_is_mesh_index, indices)) or len(set(indices)) != len(indices):
    raise ValueError(f"--{flag}={','.join(map(str, indices))}: must be distinct Face Mesh "
                     f"indices from 0 to {NUM_MESH_LANDMARKS - 1}, comma-separated, e.g. "
                     f"{','.join(map(str, DEFAULT_MESH_INDICES))}")
  return indices


def parse_mesh_indices(text):
  """'1,33,61,263,291' -> (1, 33, 61, 263, 291), with a clear error for bad input."""
  try:
    indices = tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise ValueError(f"--landmarks={text}: must be comma-separated integers, e.g. "
                     f"{','.join(map(str, DEFAULT_MESH_INDICES))}") from None
  return check_mesh_indices(indices)
