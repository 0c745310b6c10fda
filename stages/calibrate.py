"""Stage ``calibrate``: fit the implicit captioner and the student UNet's LoRA to the teacher's attention maps.

Front door of :func:`pipeline.calibration.calibrate_student` (the method, the data order, scale-out and resume
are described there and in docs/DESIGN.md §4.2). ``SPADE_STOP_AFTER_STEP=k`` stops the run after step k without
writing outputs (to test resume).

Outputs: ``artifacts/calibrate/`` (:func:`pipeline.student.save_student`, atomic), ``artifacts/calibrate_metrics.json``
(held-out L1 / map correlation before and after), ``artifacts/calibrate_run.json`` (speed, memory, device) and
``artifacts/calibrate_curve.csv`` (``step,loss``).
"""

from __future__ import annotations

import os

from pipeline import paths
from pipeline.calibration import calibrate_student, calibration_metrics, open_store
from pipeline.dist import barrier, init_distributed, shutdown
from pipeline.engine import peak_memory_mb, write_curve
from pipeline.io import prepare_outputs, write_metrics
from pipeline.models import load_models, resolve_device
from pipeline.params import ScopedParams
from pipeline.student import save_student

PARAMS = ("model.dtype", "model.device", "model.image_size", "calibrate")
STOP_ENV = "SPADE_STOP_AFTER_STEP"
# calibrate_run.json, not the DVC metrics: what differs between two runs with the same result
RUN_FIGURES = ("steps_this_run", "resumed_from_step", "world_size", "seconds", "steps_per_second", "data_share",
               "peak_memory_mb", "device", "teacher")


def run(p: ScopedParams) -> None:
    prepare_outputs(paths.CALIBRATE, paths.CALIBRATE_CHECKPOINTS, paths.CALIBRATE_METRICS, paths.CALIBRATE_RUN,
                    paths.CALIBRATE_CURVE)
    c = p.calibrate
    device = resolve_device(p.model.device)
    ctx = init_distributed(device)
    models = load_models(paths.MODELS, device=str(device), dtype=p.model.dtype)
    store = open_store(models, p.model.image_size)
    stop_after = int(os.environ.get(STOP_ENV, "0")) or None
    result = calibrate_student(models, store, c, image_size=p.model.image_size, dtype=p.model.dtype, ctx=ctx,
                               device=device, stop_after=stop_after)
    if result.run.interrupted:
        print(f"calibrate: stopping after step {result.run.step} ({STOP_ENV})")
    elif ctx.is_main:
        save_student(paths.CALIBRATE, result.student)
        metrics = calibration_metrics(result, c, ctx, peak_memory_mb(device), device, models.teacher_identity)
        write_metrics(metrics, RUN_FIGURES, paths.CALIBRATE_METRICS, paths.CALIBRATE_RUN)
        curve = [{"step": r["step"], "loss": f"{r['loss']:.6g}"} for r in result.run.history]
        write_curve(paths.CALIBRATE_CURVE, curve, ("step", "loss"))
        print(
            f"calibrate: mode={c.mode} steps={metrics['steps']} held-out L1 {result.before['l1']} -> "
            f"{result.after['l1']}, correlation {result.before['corr']} -> {result.after['corr']} -> {paths.CALIBRATE}"
        )
    barrier(ctx)
    shutdown(ctx)


if __name__ == "__main__":
    from pipeline.runner import stage_main

    stage_main("calibrate", PARAMS, run)
