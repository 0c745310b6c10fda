"""Offline PNG plots of the pipeline's DVC plots (``spade plots``).

``dvc plots show`` writes an HTML page whose Vega scripts load from a CDN, so it stays blank without network.
These are the same curves as PNG files, drawn with matplotlib: calibrate's and train's loss curves (one line per
loss column, log scale) and the per-predicate recall bar chart the evaluate stage already draws. They are written
to ``artifacts/plots/`` (a user output, never inside a DVC output).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pipeline import paths
from pipeline.evaluation import PER_PREDICATE_PNG
from pipeline.visualise import save_figure

PLOTS_DIR = Path("artifacts/plots")
EVALUATED_PER_PREDICATE = paths.EVALUATE / PER_PREDICATE_PNG  # what the evaluate stage writes


def read_curve(path: Path) -> dict[str, list[float]]:
    """The columns of a curve CSV (``step`` first, then losses) as floats; a named error for a bad file."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV with a 'step' column and at least one row")
    try:
        return {name: [float(r[name]) for r in rows] for name in rows[0]}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: a value is not a number ({err})") from None


def plot_curve(curve: dict[str, list[float]], columns: list[str], title: str, path: Path) -> Path:
    """Line plot of ``columns`` of ``curve`` over ``step`` (log y when all values are positive) as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for name in columns:
        ax.plot(curve["step"], curve[name], label=name, linewidth=1.2)
    if all(v > 0 for name in columns for v in curve[name]):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_plots(out_dir: Path = PLOTS_DIR) -> list[Path]:
    """Every plot whose input exists: ``calibrate_loss.png``, ``train_loss.png``, ``per_predicate_recall.png``.
    Raises FileNotFoundError when none exists (no stage has run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for csv_path, title, name in ((paths.CALIBRATE_CURVE, "calibrate: map loss", "calibrate_loss.png"),
                                  (paths.TRAIN_CURVE, "train: losses", "train_loss.png")):
        if csv_path.is_file():
            curve = read_curve(csv_path)
            losses = [c for c in curve if c.startswith("loss")]
            written.append(plot_curve(curve, losses, title, out_dir / name))
    if EVALUATED_PER_PREDICATE.is_file():
        target = out_dir / PER_PREDICATE_PNG
        shutil.copyfile(EVALUATED_PER_PREDICATE, target)
        written.append(target)
    if not written:
        raise FileNotFoundError(f"no curve to plot: {paths.CALIBRATE_CURVE}, {paths.TRAIN_CURVE} and "
                                f"{EVALUATED_PER_PREDICATE} are missing (run dvc repro first)")
    return written
