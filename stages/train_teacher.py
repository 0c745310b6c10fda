"""``spade train-teacher``: train the embedded teacher on synthetic scenes and write it in the diffusers layout.

Front door of :func:`pipeline.teacher_training.write_teacher` (data streams, training recipe, localisation
check and model card are described there; the frozen DVC stage in ``teacher/dvc.yaml`` reproduces the shipped
weights). Same arguments on CPU, same weights (up to float round-off between machines/thread counts).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.teacher_training import write_teacher


def run(out_dir: str | Path, steps: int = 3000, seed: int = 0, num_scenes: int = 4000, batch_size: int = 32,
        lr: float = 3e-3, image_size: int = 128, eval_scenes: int = 100, threads: int | None = 1,
        log_every: int = 50) -> dict:
    """Train and write the teacher into ``out_dir``; returns the record written to ``training.json``."""
    return write_teacher(out_dir, steps=steps, seed=seed, num_scenes=num_scenes, batch_size=batch_size, lr=lr,
                         image_size=image_size, eval_scenes=eval_scenes, threads=threads, log_every=log_every)
