"""Pictures of keypoints on faces: face grids (evaluation, TensorBoard), photo overlays (predict).

Points are drawn in facekp's continuous convention (facekp.core.keypoints): every image is shown
with extent (0, W, H, 0), so pixel i covers [i, i + 1) on the axes and a point at x = i + 0.5 lands
on pixel i's centre (matplotlib's default extent puts pixel centres at integers, half a pixel off).

Every function draws on its own matplotlib figure (Agg backend, no display needed) and writes a
PNG through facekp.core.files (whole or absent). Figure sizes are fixed in inches at DPI, so a
picture's pixel size is known in advance (tests check it).
"""
import io
import math
import textwrap

import numpy as np

from facekp.core import files

DPI = 100
GRID_FACES = 16  # faces shown in a grid (evaluation pictures, TensorBoard)
PANEL_INCHES = 2.0  # one face of a grid
GAP_INCHES = 0.1
MARGIN_INCHES = 0.1
MIN_GRID_INCHES = 6.0  # room for the title and legend however few faces there are
TITLE_LINE_INCHES = 0.19  # 9 pt text
CAPTION_LINE_INCHES = 0.13  # 7 pt text
LEGEND_ENTRY_INCHES = 1.5
LEGEND_ROW_INCHES = 0.2
NAME_CHARS = 30
LABEL_COLOUR = "#1ec31e"
PREDICTION_COLOUR = "#ff2d2d"
SLOT_MARKERS = ("o", "^", "s", "v", "D", "P", "X", "*", "p", "h")


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display), imported on first use: training imports
  this module and loads matplotlib only when it first draws a picture."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def slot_marker(slot):
  return SLOT_MARKERS[slot % len(SLOT_MARKERS)]


def figure_png(fig):
  """The figure as PNG bytes at DPI without trimming, so its size is figsize * DPI; closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 6})
  pyplot().close(fig)
  return buffer.getvalue()


def save_figure(fig, path):
  """Writes the figure as a PNG file (whole or absent)."""
  files.atomic_write(str(path), figure_png(fig))


def short_name(name, limit=NAME_CHARS):
  """`name` in at most `limit` characters, cut in the middle: its start and its end (the face
  number and extension) stay readable."""
  if len(name) <= limit:
    return name
  head = (limit - 1) * 2 // 5
  return name[:head] + "\u2026" + name[len(name) - (limit - 1 - head):]


def show_image(ax, image):
  """The image on `ax` in continuous pixel coordinates: [0, W] x [0, H], y down."""
  height, width = image.shape[:2]
  ax.imshow(np.clip(image, 0, 255).astype(np.uint8), extent=(0, width, height, 0),
            interpolation="nearest")
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.axis("off")


def _legend_handles(names, with_colours=True):
  line = pyplot().Line2D
  handles = []
  if with_colours:
    handles += [line([], [], color=LABEL_COLOUR, marker="o", linestyle="", label="label"),
                line([], [], color=PREDICTION_COLOUR, marker="o", linestyle="", label="prediction")]
  handles += [line([], [], color="0.3", marker=slot_marker(k), linestyle="", label=name)
              for k, name in enumerate(names)]
  return handles


def _draw_points(ax, points_px, colour, size=28, filled=True, linewidth=1.2):
  for k, (x, y) in enumerate(points_px):
    ax.scatter([x], [y], s=size, marker=slot_marker(k), linewidths=linewidth,
               facecolors=colour if filled else "none", edgecolors=colour)


def grid_heading(title, shown, total, chosen="first"):
  """The title of a face grid and a line saying which faces of how many it shows."""
  faces = "face" if (total or shown) == 1 else "faces"
  if total is None or total == shown:
    count = "the only face" if shown == 1 else f"all {shown} faces"
  elif chosen == "worst":
    count = f"the {shown} worst of {total} {faces}"
  else:
    count = f"{shown} of {total} {faces} ({chosen} in stored order)"
  return f"{title}\n{count}" if title else count


def wrap(text, inches, points):
  """Lines of `text` that fit `inches` at a font of `points` (about 0.55 em per character)."""
  chars = max(10, int(inches * 72 / (0.55 * points)))
  return [line for paragraph in text.split("\n") for line in textwrap.wrap(paragraph, chars)]


def face_grid(path, images, true_px, pred_px, names, **options):
  """Writes face_grid_figure(...) to `path` as PNG; returns the heading drawn."""
  fig, heading = face_grid_figure(images, true_px, pred_px, names, **options)
  save_figure(fig, path)
  return heading


def face_grid_figure(images, true_px, pred_px, names, captions=None, title="", columns=4,
                     total=None, chosen="first"):
  """A grid of faces with labelled points (green) and predicted points (red), error lines.

  images: uint8 or float [N,S,S,3] (0..255); true_px, pred_px: [N,K,2] pixels of the images;
  names: K slot names for the legend; captions: N short texts above the faces (a line break
  gives a second line); total: how many faces these N were chosen from ("first" or "worst"),
  said under the title. The figure is laid out in inches: panels of PANEL_INCHES, a band for
  the title, one for each row's captions, one for the legend; never narrower than
  MIN_GRID_INCHES. Returns (the figure, the heading drawn).
  """
  num = len(images)
  columns = max(1, min(columns, num))
  rows = max(1, -(-num // columns))
  grid_width = columns * PANEL_INCHES + (columns - 1) * GAP_INCHES
  width = max(grid_width + 2 * MARGIN_INCHES, MIN_GRID_INCHES)
  heading = grid_heading(title, num, total, chosen)
  heading_lines = wrap(heading, width - 2 * MARGIN_INCHES, 9)
  caption_lines = max((len(c.split("\n")) for c in captions), default=0) if captions else 0
  caption_band = caption_lines * CAPTION_LINE_INCHES + (0.05 if caption_lines else 0.0)
  entries = len(names) + 2
  legend_columns = max(1, min(entries, int(width // LEGEND_ENTRY_INCHES)))
  legend_band = math.ceil(entries / legend_columns) * LEGEND_ROW_INCHES + MARGIN_INCHES
  top_band = MARGIN_INCHES + len(heading_lines) * TITLE_LINE_INCHES + 0.05
  row_height = caption_band + PANEL_INCHES
  height = top_band + rows * row_height + (rows - 1) * GAP_INCHES + legend_band
  fig = pyplot().figure(figsize=(width, height))
  left0 = (width - grid_width) / 2
  for i in range(num):
    row, column = divmod(i, columns)
    left = left0 + column * (PANEL_INCHES + GAP_INCHES)
    bottom = height - top_band - row * (row_height + GAP_INCHES) - row_height
    ax = fig.add_axes((left / width, bottom / height, PANEL_INCHES / width,
                       PANEL_INCHES / height))
    show_image(ax, images[i])
    for (x0, y0), (x1, y1) in zip(true_px[i], pred_px[i]):
      ax.plot([x0, x1], [y0, y1], color="yellow", linewidth=0.8)
    _draw_points(ax, true_px[i], LABEL_COLOUR, filled=False)
    _draw_points(ax, pred_px[i], PREDICTION_COLOUR, size=14)
    if captions is not None:
      ax.set_title(captions[i], fontsize=7, pad=3, linespacing=1.1)
  fig.text(0.5, 1 - MARGIN_INCHES / height, "\n".join(heading_lines), ha="center", va="top",
           fontsize=9)
  fig.legend(handles=_legend_handles(names), loc="lower center", ncol=legend_columns,
             fontsize=7, frameon=False, bbox_to_anchor=(0.5, MARGIN_INCHES / 2 / height))
  return fig, heading


def _face_side(outline):
  """The side of a face's crop outline [4, 2] in the photo's pixels."""
  return float(np.linalg.norm(np.asarray(outline[1]) - np.asarray(outline[0])))


def photo_overlay(path, image, faces, names, max_inches=10.0):
  """A photo with each face's predicted points and the outline of its aligned crop.

  faces: list of (points_px [K,2], crop_outline_px [4,2]) in the photo's pixels. Markers and
  lines scale with each face as drawn (a face filling a large photo gets large markers, a small
  one stays readable).
  """
  height, width = image.shape[:2]
  scale = max_inches / max(height, width)  # inches per photo pixel
  fig = pyplot().figure(figsize=(width * scale, height * scale))
  ax = fig.add_axes((0, 0, 1, 1))
  show_image(ax, image)
  for points, outline in faces:
    side_points = _face_side(outline) * scale * 72
    closed = np.concatenate([outline, outline[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="yellow",
            linewidth=float(np.clip(side_points / 150, 1.0, 3.0)))
    diameter = float(np.clip(side_points / 16, 4.0, 16.0))
    _draw_points(ax, points, PREDICTION_COLOUR, size=diameter ** 2,
                 linewidth=float(np.clip(diameter / 8, 0.8, 2.0)))
  ax.legend(handles=_legend_handles(names, with_colours=False), loc="upper right", fontsize=7,
            framealpha=0.6)
  save_figure(fig, path)
