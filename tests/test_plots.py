"""Tests for facekp.core.plots: markers land on their points (found in the rendered pixels), layout
says what it shows and cuts nothing off, picture sizes are the documented ones."""
import numpy as np
from PIL import Image
import pytest

from facekp.core import drawing
from facekp.core import schema as schema_lib
from facekp.core import workdir as workdir_lib
from facekp.eval import plots

SCHEMA = schema_lib.Schema((1, 33, 61, 263, 291), (1, 263, 291, 33, 61))
RED = np.array([255, 45, 45])  # drawing.PREDICTION_COLOUR


def _render(path):
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), np.float64)


def _centroid(mask):
  """(x, y) centroid of a boolean mask, in the continuous pixel coordinates of the render."""
  rows, cols = np.nonzero(mask)
  assert len(rows), "nothing found"
  return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


def _red(render):
  return np.all(np.abs(render - RED) < 40, axis=-1)


def test_overlay_marker_sits_on_its_pixel_to_a_tenth_of_a_pixel(tmp_path):
  """A white photo pixel on blue and a point at its centre (i + 0.5): drawn 40 rendered pixels
  per photo pixel, the marker's centroid must be the white block's centre to 4 pixels."""
  image = np.zeros((8, 10, 3), np.uint8)
  image[..., 2] = 255
  image[5, 3] = 255
  outline = np.array([[1.0, 0.5], [9.0, 0.5], [9.0, 7.5], [1.0, 7.5]])
  drawing.photo_overlay(tmp_path / "photo.png", image, [(np.array([[3.5, 5.5]]), outline)],
                      ("nose_tip",), max_inches=4)
  render = _render(tmp_path / "photo.png")
  assert render.shape == (320, 400, 3)
  left = np.arange(render.shape[1]) < 200  # away from the legend (upper right)
  rows, cols = np.nonzero(np.all(render > 200, axis=-1) & left)  # the block around the marker
  block_centre = np.array([cols.min() + cols.max() + 1, rows.min() + rows.max() + 1]) / 2
  assert cols.max() - cols.min() + 1 == pytest.approx(40, abs=1)
  np.testing.assert_allclose((_centroid(_red(render) & left) - block_centre) / 40, 0.0,
                             atol=0.1)


def _box(mask):
  rows, cols = np.nonzero(mask)
  box = np.zeros_like(mask)
  box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
  return box


def test_grid_marker_sits_on_the_pixel_it_names(tmp_path):
  """Face 0 shows one white pixel on blue and no points; face 1 the same image with a
  prediction at that pixel's centre (i + 0.5). Panels sit PANEL + GAP inches apart, so the
  marker must be found exactly that far right of the white pixel."""
  size, column, row = 8, 2, 5
  images = np.zeros((2, size, size, 3), np.uint8)
  images[..., 2] = 255
  images[:, row, column] = 255
  points = np.full((2, 1, 2), np.nan)
  points[1, 0] = (column + 0.5, row + 0.5)
  drawing.face_grid(tmp_path / "grid.png", images, points, points, ("nose_tip",), columns=2)
  render = _render(tmp_path / "grid.png")
  blue = np.all(np.abs(render - (0, 0, 255)) < 5, axis=-1)
  left = np.arange(render.shape[1]) < render.shape[1] // 2
  pixel = _centroid(np.all(render > 250, axis=-1) & _box(blue & left))
  marker = _centroid(_red(render) & _box(blue & ~left))
  per_pixel = drawing.PANEL_INCHES * drawing.DPI / size  # rendered pixels per image pixel
  offset = (drawing.PANEL_INCHES + drawing.GAP_INCHES) * drawing.DPI
  np.testing.assert_allclose((marker - pixel - (offset, 0)) / per_pixel, 0.0, atol=0.1)


def _faces(num, size=32, seed=1):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num, size, size, 3)).astype(np.uint8)
  true = rng.uniform(4, size - 4, (num, 5, 2))
  return images, true, true + 1


def test_grid_heading_says_how_many_of_how_many(tmp_path):
  images, true, pred = _faces(16)
  heading = drawing.face_grid(tmp_path / "g.png", images, true, pred, SCHEMA.names,
                            title="the test split", total=500)
  assert "16 of 500 faces" in heading and heading.startswith("the test split")
  worst = drawing.face_grid(tmp_path / "w.png", images, true, pred, SCHEMA.names, total=500,
                          chosen="worst")
  assert "the 16 worst of 500 faces" in worst
  assert "all 5 faces" in drawing.face_grid(tmp_path / "a.png", images[:5], true[:5], pred[:5],
                                          SCHEMA.names, total=5)


@pytest.mark.parametrize("num", [1, 5, 16])
def test_grid_layout_fits_everything(tmp_path, num):
  images, true, pred = _faces(num)
  long_title = "the test split of /a/rather/long/path/to/another/dataset: label and prediction"
  drawing.face_grid(tmp_path / "g.png", images, true, pred, SCHEMA.names, title=long_title,
                  captions=[drawing.short_name(f"folder/face_{i:04d}_of_a_long_name_f0.png")
                            for i in range(num)], total=500)
  render = _render(tmp_path / "g.png")
  height, width = render.shape[:2]
  columns = min(4, num)
  rows = -(-num // columns)
  assert width == round(100 * max(drawing.MIN_GRID_INCHES, columns * 2 + (columns - 1) * 0.1 + 0.2))
  assert rows * 200 + 80 < height < rows * 200 + 10 + rows * 50 + 150  # panels + title + legend
  # Nothing is cut off: the outermost pixels of the picture are background.
  for edge in (render[:2], render[-2:], render[:, :2], render[:, -2:]):
    assert np.all(edge > 250)


def test_short_name_keeps_the_start_and_the_end():
  name = "aligned128/some_package/a_rather_long_photo_name_f3.png"
  short = drawing.short_name(name)
  assert len(short) == drawing.NAME_CHARS
  assert short.startswith("aligned128/") and short.endswith("name_f3.png") and "\u2026" in short
  assert drawing.short_name("face.png") == "face.png"


def test_best_epoch_is_the_lowest_validation_figure_counted_from_one():
  history = {"epoch": np.array([0, 1, 2]), "val_loss": np.array([3.0, 1.0, 2.0]),
             "val_mae_px": np.array([3.0, 2.0, 1.0])}
  assert plots.best_epoch(history) == (3, "val_mae_px")
  assert plots.best_epoch(history, monitor="val_loss") == (2, "val_loss")
  assert plots.best_epoch({"epoch": np.array([1, 2]), "val_loss": np.array([2.0, 1.0])}) == \
      (2, "val_loss")
  assert plots.best_epoch({"loss": np.array([1.0])}) is None


def test_pictures_have_the_expected_size(tmp_path):
  images, true, pred = _faces(6)
  drawing.face_grid(tmp_path / "grid.png", images, true, pred, SCHEMA.names, columns=4)
  assert _render(tmp_path / "grid.png").shape[1] == 850
  plots.ced_curves(tmp_path / "ced.png", [("a", {"model": [0.01, 0.2]}), ("b", {"m": [0.05]})])
  assert _render(tmp_path / "ced.png").shape[:2] == (400, 1000)
  history = tmp_path / "history.csv"
  history.write_text("epoch,loss,mae,val_loss,val_mae\n0,1.0,0.5,1.1,0.6\n1,0.5,0.3,0.7,0.4\n")
  plots.training_curves(tmp_path / "curves.png", plots.history_columns(workdir_lib.read_history(str(history))))
  assert _render(tmp_path / "curves.png").shape[:2] == (350, 900)
  drawing.photo_overlay(tmp_path / "photo.png", np.zeros((50, 100, 3), np.uint8),
                      [(true[0], np.array([[0, 0], [10, 0], [10, 10], [0, 10]]))], SCHEMA.names,
                      max_inches=4)
  assert _render(tmp_path / "photo.png").shape[:2] == (200, 400)
