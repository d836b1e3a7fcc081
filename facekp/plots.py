"""Pictures of keypoint predictions: face grids, the CED curve, training curves, photo overlays.

Every function draws on its own matplotlib figure (Agg backend, no display needed) and writes a
PNG through tf.io.gfile. Figure sizes are fixed in inches at DPI, so a picture's pixel size is
known in advance (tests check it).
"""
import csv
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import FormatStrFormatter  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

DPI = 100
PANEL_INCHES = 2.0
LABEL_COLOUR = "#1ec31e"
PREDICTION_COLOUR = "#ff2d2d"
SLOT_MARKERS = ("o", "^", "s", "v", "D", "P", "X", "*", "p", "h")


def slot_marker(slot):
  return SLOT_MARKERS[slot % len(SLOT_MARKERS)]


def save_figure(fig, path):
  """Writes the figure as PNG at DPI without trimming, so its size is figsize * DPI."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 6})
  plt.close(fig)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())


def _legend_handles(names, with_colours=True):
  handles = []
  if with_colours:
    handles += [Line2D([], [], color=LABEL_COLOUR, marker="o", linestyle="", label="label"),
                Line2D([], [], color=PREDICTION_COLOUR, marker="o", linestyle="",
                       label="prediction")]
  handles += [Line2D([], [], color="0.3", marker=slot_marker(k), linestyle="", label=name)
              for k, name in enumerate(names)]
  return handles


def _draw_points(ax, points_px, colour, size=28, filled=True):
  for k, (x, y) in enumerate(points_px):
    ax.scatter([x], [y], s=size, marker=slot_marker(k), linewidths=1.2,
               facecolors=colour if filled else "none", edgecolors=colour)


def face_grid(path, images, true_px, pred_px, names, captions=None, title="", columns=4):
  """A grid of faces with labelled points (green) and predicted points (red), error lines.

  images: uint8 or float [N,S,S,3] (0..255); true_px, pred_px: [N,K,2] pixels of the images;
  names: K slot names for the legend; captions: N short texts under the faces.
  """
  num = len(images)
  columns = max(1, min(columns, num))
  rows = max(1, -(-num // columns))
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows + 0.9))
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= num:
      continue
    ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8), interpolation="nearest")
    for (x0, y0), (x1, y1) in zip(true_px[i], pred_px[i]):
      ax.plot([x0, x1], [y0, y1], color="yellow", linewidth=0.8)
    _draw_points(ax, true_px[i], LABEL_COLOUR, filled=False)
    _draw_points(ax, pred_px[i], PREDICTION_COLOUR, size=14)
    if captions is not None:
      ax.set_title(captions[i], fontsize=7)
  fig.legend(handles=_legend_handles(names), loc="lower center", ncol=min(7, len(names) + 2),
             fontsize=7, frameon=False)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=0.01, right=0.99, top=0.93 if title else 0.98,
                      bottom=0.6 / (PANEL_INCHES * rows + 0.9), wspace=0.05, hspace=0.2)
  save_figure(fig, path)


CURVE_STYLES = {"model": {"color": "C0"}, "model + flip TTA": {"color": "C2"},
                "mean shape": {"color": "C1", "linestyle": ":"},
                "teacher floor": {"color": "0.45", "linestyle": "--"}}


def ced_curves(path, panels, limit=0.10):
  """Cumulative error distributions.

  panels: list of (title, {curve name: per-image NME array}); one plot per panel, each curve
  labelled with its AUC up to `limit` (dotted line), the yardsticks (CURVE_STYLES) in their own
  style. The x axis reaches past `limit` where most faces of a panel lie beyond it.
  """
  fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(5.0 * len(panels), 4.0))
  for ax, (title, curves) in zip(axes.flat, panels):
    largest = max(float(np.quantile(nme, 0.9)) for nme in curves.values())
    x_max = min(max(limit, largest * 1.1), 5 * limit)
    thresholds = np.linspace(0.0, x_max, 401)
    for name, nme in curves.items():
      nme = np.asarray(nme)
      fraction = (nme[None, :] <= thresholds[:, None]).mean(axis=1)
      area = float(np.clip(1.0 - nme / limit, 0.0, None).mean())
      ax.plot(thresholds * 100, fraction * 100, label=f"{name} (AUC {area:.3f})",
              **CURVE_STYLES.get(name, {}))
    if x_max > limit:
      ax.axvline(limit * 100, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(0, x_max * 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("NME, % of inter-ocular distance")
    ax.set_ylabel("faces with error at most x, %")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  save_figure(fig, path)


def read_history(path):
  """history.csv (keras CSVLogger) -> {column: float array}."""
  with tf.io.gfile.GFile(path) as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path} holds no epochs")
  return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]}


def training_curves(path, history):
  """One plot per metric that has a validation twin (loss, MAE, ...): train and validation."""
  epochs = history.get("epoch", np.arange(len(next(iter(history.values())))))
  epochs = np.asarray(epochs) + 1
  metrics = [k for k in history if f"val_{k}" in history]
  if not metrics:
    raise ValueError("history has no metric with a val_ twin to plot")
  fig, axes = plt.subplots(1, len(metrics), squeeze=False, figsize=(4.5 * len(metrics), 3.5))
  for ax, name in zip(axes.flat, metrics):
    ax.plot(epochs, history[name], marker=".", label="train")
    ax.plot(epochs, history[f"val_{name}"], marker=".", label="validation")
    if np.all(history[name] > 0) and np.all(history[f"val_{name}"] > 0):
      ax.set_yscale("log")
      ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
      ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)


def photo_overlay(path, image, faces, names, max_inches=10.0):
  """A photo with each face's predicted points and the outline of its aligned crop.

  faces: list of (points_px [K,2], crop_outline_px [4,2]) in the photo's pixels.
  """
  height, width = image.shape[:2]
  scale = max_inches / max(height, width)
  fig = plt.figure(figsize=(width * scale, height * scale))
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(image, interpolation="bilinear")
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.axis("off")
  for points, outline in faces:
    closed = np.concatenate([outline, outline[:1]])
    ax.plot(closed[:, 0], closed[:, 1], color="yellow", linewidth=1.0)
    _draw_points(ax, points, PREDICTION_COLOUR, size=30)
  ax.legend(handles=_legend_handles(names, with_colours=False), loc="upper right", fontsize=7,
            framealpha=0.6)
  save_figure(fig, path)
