"""``spade train-clip``: pre-train the embedded CLIP on synthetic scenes and write it in open_clip's format.

Front door of :func:`pipeline.clip_training.write_clip` (data streams, losses, recipe and the held-out report
in the model card are described there; the frozen DVC stage ``train_clip`` in ``teacher/dvc.yaml`` reproduces
the shipped ``teacher/clip``). Same arguments and thread count on CPU, same weights.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.clip_training import LOSS_TERMS, write_clip


def run(out_dir: str | Path, steps: int = 2000, seed: int = 0, num_scenes: int = 4000, batch_size: int = 32,
        lr: float = 1e-3, eval_scenes: int = 200, threads: int | None = 1,
        terms: tuple[str, ...] = LOSS_TERMS) -> dict:
    """Train and write the CLIP into ``out_dir``; returns the record written to ``training.json``."""
    return write_clip(out_dir, steps=steps, seed=seed, num_scenes=num_scenes, batch_size=batch_size, lr=lr,
                      eval_scenes=eval_scenes, threads=threads, terms=terms)
