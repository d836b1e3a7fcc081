"""The photo protocol (facekp.eval.photos): the teacher on each face's region of a whole photo,
the matching of predicted faces to the teacher's, and the figures, on a real photo."""
import collections

import numpy as np

from facekp.core import images
from facekp.core import sample
from facekp.core import schema as schema_lib
from facekp.data import align
from facekp.data import faces as faces_lib
from facekp.eval import photos

MESH = list(schema_lib.DEFAULT_MESH_INDICES)
EYES = (1, 3)  # the default schema's outer eye corners
Face = collections.namedtuple("Face", "box points")


def test_faces_match_one_to_one_nearest_first_within_half_a_face():
  teacher_centres = np.array([[100.0, 100.0], [160.0, 100.0], [400.0, 400.0]])
  sizes = np.array([100.0, 100.0, 100.0])
  predicted = np.array([[150.0, 100.0],  # nearest the second face (10 px), 50 from the first
                        [110.0, 100.0],  # the first face's
                        [130.0, 100.0],  # between the two, both taken: extra
                        [400.0, 460.0]])  # 60 px from the third: beyond half its size
  np.testing.assert_array_equal(photos.match_faces(teacher_centres, sizes, predicted), [1, 0, -1])
  np.testing.assert_array_equal(photos.match_faces(teacher_centres, sizes, np.zeros((0, 2))),
                                [-1, -1, -1])
  assert photos.match_faces(np.zeros((0, 2)), np.zeros(0), predicted).shape == (0,)


def test_figures_count_misses_and_read_nme_by_the_teachers_eyes():
  face = np.array([[50.0, 60.0], [30.0, 45.0], [35.0, 75.0], [70.0, 45.0], [65.0, 75.0]])
  teacher = np.stack([face, face * 2])  # inter-ocular 40 and 80 px
  predicted = np.stack([face + [3.0, 4.0], np.full((5, 2), np.nan)])  # 5 px off; a miss
  result = photos.PhotoFaces(["a.jpg", "b.jpg"], teacher, {"p": predicted}, {"p": 2}, 0)
  figures = photos.photo_metrics(result, "p", EYES)
  assert figures["faces_found"] == 0.5 and figures["num_faces"] == 2
  assert figures["extra_faces"] == 2
  np.testing.assert_allclose([figures["nme"], figures["mae_px"]], [5 / 40, 3.5])
  assert figures["failure_rate_0.10"] == 1.0
  assert "nme" not in photos.photo_metrics(result, "p", EYES, among=np.array([False, True]))


class TeacherShifted:
  """A predictor whose faces are the teacher's own points moved 1 px right and 1 px down, less
  the teacher's smallest face, plus one face where there is none."""

  def __init__(self, finder):
    self.finder = finder

  def predict(self, image, max_faces=1):
    faces = []
    for landmarks in photos.teacher_faces(self.finder, image, max_faces)[:-1]:
      c, x, y = align.face_square(landmarks)
      corners = np.array([c - x - y, c + x - y, c + x + y, c - x + y])
      faces.append(Face((*corners.min(0), *corners.max(0)), landmarks[MESH] + 1.0))
    return faces + [Face((0.0, 0.0, 12.0, 12.0), np.zeros((5, 2)))]


def test_the_teacher_scores_faces_the_short_range_detector_misses_in_photo_pixels():
  path = sample.sample_photo("multi_face.jpg")  # 5 clear faces; Face Mesh alone finds 3
  image = images.load_rgb(path)
  with photos.teacher_graphs() as finder:
    assert len(finder.photo_mesh.detect(image)) < 5
    teacher = photos.teacher_faces(finder, image)
    assert len(teacher) == 5
    sizes = [faces_lib.face_size(points) for points in teacher]
    assert sizes == sorted(sizes, reverse=True)  # largest first
    result = photos.photo_faces([path, "missing.jpg"], {"shifted": TeacherShifted(finder)}, MESH)
  assert result.skipped == 1 and result.photos == [path] * 5
  assert result.teacher.shape == (5, 5, 2)
  figures = photos.photo_metrics(result, "shifted", EYES)
  assert figures["faces_found"] == 0.8 and figures["extra_faces"] == 1
  np.testing.assert_allclose(figures["mae_px"], 1.0, atol=1e-3)  # the same faces, 1 px off
  iod = np.linalg.norm(result.teacher[:4, 1] - result.teacher[:4, 3], axis=-1)
  np.testing.assert_allclose(figures["nme"], np.mean(np.sqrt(2) / iod), rtol=1e-3)
  assert np.isnan(result.predicted["shifted"][4]).all()  # the smallest: a miss
