"""Pictures of an evaluation: cumulative error distributions and training curves."""
from matplotlib import ticker
import numpy as np

from facekp.core import drawing
from facekp.eval import metrics as metrics_lib

CURVE_STYLES = {"model": {"color": "C0"}, "model + flip TTA": {"color": "C2"},
                "mean shape": {"color": "C1", "linestyle": ":"},
                "teacher floor": {"color": "0.45", "linestyle": "--"}}


def ced_curves(path, panels, limit=metrics_lib.AUC_LIMIT):
  """Cumulative error distributions.

  panels: list of (title, {curve name: per-image NME array}); one plot per panel, each curve
  labelled with its AUC up to `limit` (dotted line), the yardsticks (CURVE_STYLES) in their own
  style. The x axis reaches past `limit` where most faces of a panel lie beyond it.
  """
  fig, axes = drawing.pyplot().subplots(1, len(panels), squeeze=False,
                                        figsize=(5.0 * len(panels), 4.0))
  for ax, (title, curves) in zip(axes.flat, panels):
    largest = max(float(np.quantile(nme, 0.9)) for nme in curves.values())
    x_max = min(max(limit, largest * 1.1), 5 * limit)
    thresholds = np.linspace(0.0, x_max, 401)
    for name, nme in curves.items():
      ax.plot(thresholds * 100, metrics_lib.ced(nme, thresholds) * 100,
              label=f"{name} (AUC {metrics_lib.auc(nme, limit):.3f})",
              **CURVE_STYLES.get(name, {}))
    if x_max > limit:
      ax.axvline(limit * 100, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlim(0, x_max * 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("NME, % of inter-ocular distance")
    ax.set_ylabel("faces with error at most x, %")
    ax.set_title("\n".join(drawing.wrap(title, 4.5, 10)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  drawing.save_figure(fig, path)


def history_columns(rows):
  """history.csv's rows (facekp.core.workdir.read_history) -> {column: float array}."""
  if not rows:
    raise ValueError("the history holds no epochs")
  return {key: np.array([float(r[key] or "nan") for r in rows]) for key in rows[0]}  # blank: none


def epoch_numbers(history):
  """Epochs counted from 1 (keras' CSVLogger counts from 0)."""
  epochs = np.asarray(history.get("epoch", np.arange(len(next(iter(history.values()))))))
  return epochs + 1 if len(epochs) and epochs[0] == 0 else epochs


def best_epoch(history, monitor=None):
  """(epoch, monitored column) of the best validation figure: `monitor`, else val_mae_px, else
  val_loss (lower is better); None when the history has none of them."""
  for name in (monitor, "val_mae_px", "val_loss"):
    if name and name in history:
      return int(epoch_numbers(history)[int(np.argmin(history[name]))]), name
  return None


def _log_scale(ax):
  """A log y axis whose labels never crowd: decades, plus 2 and 5 when it spans little."""
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  low, high = ax.get_ylim()
  if high / low < 100:
    ax.yaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  else:
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def training_curves(path, history, monitor=None):
  """One plot per metric that has a validation twin (loss, MAE, ...): train and validation,
  and the best epoch (best_epoch: the one the saved model comes from) marked on each."""
  epochs = epoch_numbers(history)
  metrics = [k for k in history if f"val_{k}" in history]
  if not metrics:
    raise ValueError("history has no metric with a val_ twin to plot")
  best = best_epoch(history, monitor)
  fig, axes = drawing.pyplot().subplots(1, len(metrics), squeeze=False,
                                        figsize=(4.5 * len(metrics), 3.5))
  for ax, name in zip(axes.flat, metrics):
    marker = "." if len(epochs) <= 60 else None
    ax.plot(epochs, history[name], marker=marker, label="train")
    ax.plot(epochs, history[f"val_{name}"], marker=marker, label="validation")
    if best is not None:
      ax.axvline(best[0], color="0.4", linestyle="--", linewidth=1,
                 label=f"best epoch {best[0]} ({best[1]})")
    if np.all(history[name] > 0) and np.all(history[f"val_{name}"] > 0):
      _log_scale(ax)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.tight_layout()
  drawing.save_figure(fig, path)
