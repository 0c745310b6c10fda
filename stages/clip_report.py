"""``spade clip-report``: what the embedded CLIP recognises on held-out synthetic scenes, trained vs init.

Front door of :func:`pipeline.clip_eval.evaluate_clip`: zero-shot crop and mask-pooled accuracy over all 16
object classes (base and novel separately), image -> caption R@1, and predicate accuracy from subject-object
union pooling (base / novel, distant / non-distant pairs, directional / other), printed as a Markdown table and
written to ``out_dir/clip_report.{md,json,png}`` (and to ``json_path`` when given).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.clip_eval import evaluate_clip, format_report, plot_report
from pipeline.io import atomic_write_json, atomic_write_text


def run(weights_dir: str | Path, out_dir: str | Path, num_scenes: int = 200, json_path: str | Path | None = None,
        threads: int | None = 1) -> dict:
    """Write the report; returns the figures (``init`` and ``chance`` included)."""
    if threads:
        torch.set_num_threads(threads)
    report = evaluate_clip(weights_dir, num_scenes=num_scenes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"# Embedded CLIP ({num_scenes} held-out synthetic scenes, percent)\n\n{format_report(report)}\n"
    print(text)
    atomic_write_text(out / "clip_report.md", text)
    atomic_write_json(out / "clip_report.json", report)
    if json_path is not None:
        atomic_write_json(Path(json_path), report)
    plot_report(report, out / "clip_report.png")
    return report
