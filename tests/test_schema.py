"""facekp.core.schema, and mirror partners derived by MediaPipe (facekp.data.annotate)."""
import pytest

from facekp.core import schema as schema_lib
from facekp.data import mirror


def test_explicit_schema_properties(default_schema, tmp_path):
  assert default_schema.num_keypoints == 5
  assert default_schema.flip_permutation == (0, 3, 4, 1, 2)
  assert default_schema.eye_slots == (1, 3)
  assert default_schema.names[:2] == ("nose_tip", "right_eye_outer")
  assert default_schema.csv_point_columns[:3] == ("point_1_x", "point_1_y", "point_2_x")
  assert len(default_schema.csv_point_columns) == 10
  path = str(tmp_path / "schema.json")
  default_schema.save(path)
  assert schema_lib.Schema.load(path) == default_schema


def test_schema_rejects_unselected_partners_and_duplicates():
  with pytest.raises(ValueError, match=r"partners \[263\]"):
    schema_lib.Schema((1, 33), (1, 263))
  with pytest.raises(ValueError, match="duplicate"):
    schema_lib.Schema((1, 1), (1, 1))


def test_parse_mesh_indices():
  assert schema_lib.parse_mesh_indices("1,33, 61,263,291") == (1, 33, 61, 263, 291)
  for bad in ["1,x", "", "1,468", "-1"]:
    with pytest.raises(ValueError, match="landmarks|0..467"):
      schema_lib.parse_mesh_indices(bad)


@pytest.fixture(scope="module")
def sample_faces():
  return mirror.sample_images()


def test_derived_default_flip_permutation(sample_faces):
  schema = mirror.make_schema(schema_lib.DEFAULT_MESH_INDICES, sample_faces)
  assert schema.mirror_indices == (1, 263, 291, 33, 61)
  assert list(schema.flip_permutation) == [0, 3, 4, 1, 2]


def test_derived_partners_of_other_landmarks(sample_faces):
  # Inner eye corners and the chin (on the midline, its own partner).
  assert mirror.derive_mirror_indices((133, 362, 152), sample_faces) == (362, 133, 152)


def test_a_missing_partner_is_a_clear_error(sample_faces):
  with pytest.raises(ValueError, match="mirror partner of Face Mesh index 33 is 263"):
    mirror.derive_mirror_indices((1, 33, 61, 291), sample_faces)


def test_no_face_to_learn_from_is_a_clear_error(sample_faces):
  with pytest.raises(ValueError, match="found no face"):
    mirror.derive_mirror_indices((1,), [sample_faces[0][:8, :8]])
