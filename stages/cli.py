"""The ``spade`` command line: one sub-command per DVC stage (``stages.<name>`` imported lazily and run like
``python -m stages.<name>``, see :mod:`pipeline.runner`) plus the user commands. Heavy imports happen inside the
commands so that ``spade --help`` stays fast. Expected errors print one ``error: ...`` line (exit status per class:
:mod:`pipeline.runner`); ``spade --debug <command>`` (or ``SPADE_DEBUG=1``) shows the traceback instead."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer

from pipeline.runner import DEBUG_ENV, exit_on, launch_torchrun, run_stage, user_errors

app = typer.Typer(help="SPADE pipeline: prepare -> models -> invert -> calibrate -> train -> evaluate.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
app.add_typer(params_app, name="params")

PARAMS_OPTION = typer.Option("params.yaml", "--params", "-p", help="Parameter file to read.")
NPROC_OPTION = typer.Option(None, "--nproc", envvar="SPADE_NPROC",
                            help="Run under `torchrun --standalone` with N processes.")

STAGES = ("prepare", "models", "invert", "calibrate", "train", "evaluate")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks (same as {DEBUG_ENV}=1).")) -> None:
    os.environ.update({DEBUG_ENV: "1"} if debug else {})  # also seen by the torchrun workers of --nproc


def _make_stage_command(name: str) -> None:
    def command(params: str = PARAMS_OPTION, nproc: int | None = NPROC_OPTION) -> None:
        if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
            raise typer.Exit(launch_torchrun(name, params, nproc))
        run_stage(importlib.import_module(f"stages.{name}"), params)

    app.command(name, help=f"Run the `{name}` stage (same as `python -m stages.{name}`).")(command)


for _name in STAGES:
    _make_stage_command(_name)


@params_app.command("check")
def params_check(file: Path = typer.Argument(Path("params.yaml"), help="Parameter file.")) -> None:
    """Validate FILE against the schema; print every problem with its key."""
    from pipeline.params import ParamsError, load_params

    with exit_on(ParamsError, prefix=""):
        load_params(file)
    typer.echo(f"{file}: ok")


@params_app.command("defaults")
def params_defaults() -> None:
    """Print the default parameters as YAML."""
    import yaml

    from pipeline.params import default_params_dict

    typer.echo(yaml.safe_dump(default_params_dict(), sort_keys=False))


@app.command("predict")
def predict_command(
    images: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG)."),
    objects: Path | None = typer.Option(None, help="Object vocabulary: a text file, one class name per line."),
    predicates: Path | None = typer.Option(None, help="Predicate vocabulary: one name per line."),
    out: Path = typer.Option(Path("predictions"), help="Output folder (PNG + JSON per image)."),
    top_k: int = typer.Option(5, help="Triplets drawn on each PNG."),
    max_triplets: int = typer.Option(100, help="Triplets kept in each JSON scene graph."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto (cuda when available)."),
    dtype: str = typer.Option("float32", help="UNet / VAE / text-encoder dtype: float32 | bfloat16 | float16."),
    min_score: float | None = typer.Option(None, help="Objects scoring below this are left out, with their "
                                           "triplets (default: stages.predict.MIN_SCORE, 0.01)."),
) -> None:
    """Scene graphs for any images with the trained model (optionally with your own vocabulary)."""
    from stages.predict import predict_files, resolve_runtime

    with exit_on(FileNotFoundError, ValueError):
        score = {} if min_score is None else {"min_score": min_score}
        written = predict_files(images, out, objects, predicates, top_k, max_triplets, *resolve_runtime(device, dtype),
                                **score)
    typer.echo(f"wrote {len(written)} scene graphs to {out}/")


@app.command("report")
def report_command(
    out: Path | None = typer.Option(None, help="Also write the Markdown to this file."),
    experiments: bool = typer.Option(True, help="Add an ablation table from `dvc exp show`."),
) -> None:
    """Markdown tables shaped like the paper's Tables 1 and 4 (and an ablation table over DVC experiments)."""
    from pipeline.reporting import run_report

    with exit_on(FileNotFoundError):
        typer.echo(run_report(out=out, with_experiments=experiments))


@app.command("ablate")
def ablate_command(
    tables: str = typer.Option("4,5,6,7", help="Paper tables to run, comma-separated."),
    seeds: int = typer.Option(3, min=1, help="Seeds 0..N-1 per row (train.seed and calibrate.seed)."),
    jobs: int = typer.Option(1, min=1, help="Experiments run at once."),
    threads: int | None = typer.Option(None, min=1, help="Torch threads per stage process (OMP_NUM_THREADS)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and rewrite the reports; run nothing."),
) -> None:
    """The paper's ablations (Tables 4-7) as `dvc exp run --temp` over seeds, resumable; writes
    reports/ablations.{json,md}."""
    from pipeline.ablations import ExperimentError, run_ablate

    with exit_on(ValueError, ExperimentError):
        run_ablate([t.strip() for t in tables.split(",") if t.strip()], seeds, jobs, threads, dry_run,
                   echo=typer.echo)


@app.command("plots")
def plots_command(
    out: Path | None = typer.Option(None, help="Folder for the PNGs (default artifacts/plots; never a DVC output)."),
) -> None:
    """The DVC plots as PNG files (loss curves, per-predicate recall), readable offline."""
    from pipeline.plots import PLOTS_DIR, write_plots

    with exit_on(FileNotFoundError, ValueError):
        for path in write_plots(out or PLOTS_DIR):
            typer.echo(str(path))


@app.command("inspect-maps")
def inspect_maps_command(
    image_id: str = typer.Argument(..., help="A calibration image id (see data/prepared/index/train.parquet)."),
    out: Path | None = typer.Option(None, help="PNG to write (default artifacts/inspections/maps-<id>.png)."),
) -> None:
    """Render an image with its stored teacher maps per triplet role (subject / predicate / object)."""
    from stages.inspect_maps import inspect_maps

    with exit_on(KeyError, ValueError, FileNotFoundError):
        typer.echo(str(inspect_maps(image_id, out)))


@app.command("train-teacher")
def train_teacher_command(
    out: Path = typer.Argument(Path("teacher/weights"), help="Output folder (diffusers layout), replaced."),
    steps: int = typer.Option(3000, min=1, help="Optimisation steps."),
    seed: int = typer.Option(0, help="Seed of the init, the scenes (stream 2) and the batches."),
    num_scenes: int = typer.Option(4000, min=1, help="Synthetic training scenes."),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(3e-3, min=0.0, help="Peak AdamW lr (1e-3 does not localise, see README)."),
    image_size: int = typer.Option(128, min=16, help="Scene size in pixels (latents are 8x smaller)."),
    eval_scenes: int = typer.Option(100, min=1, help="Held-out scenes (stream 3) of the localisation check."),
    threads: int = typer.Option(1, min=1, help="CPU threads (same seed and threads on CPU: same weights)."),
) -> None:
    """Train the embedded teacher (tiny text-to-image UNet + text encoder) on synthetic scenes."""
    from stages.train_teacher import run

    run(out, steps=steps, seed=seed, num_scenes=num_scenes, batch_size=batch_size, lr=lr, image_size=image_size,
        eval_scenes=eval_scenes, threads=threads)
    typer.echo(f"teacher written to {out}/ (MODEL_CARD.md, training.json)")


@app.command("teacher-report")
def teacher_report_command(
    weights: Path = typer.Option(Path("teacher/weights"), help="Teacher folder (diffusers layout)."),
    out: Path = typer.Option(Path("artifacts/teacher_report"), help="Output folder (.md, .json, .png)."),
    num_scenes: int = typer.Option(100, min=1, help="Held-out synthetic scenes."),
    grid_scenes: int = typer.Option(4, min=0, help="Scenes drawn in teacher_maps.png."),
    store: Path | None = typer.Option(None, help="Also score an inversion store, e.g. artifacts/invert/teacher.zarr."),
) -> None:
    """Pointing game and top-k IoU of the teacher's maps per token kind, trained vs init, plus a PNG grid."""
    from stages.teacher_report import run

    with exit_on(FileNotFoundError, ValueError, KeyError):
        run(weights, out, num_scenes=num_scenes, grid_scenes=grid_scenes, store=store)


@app.command("train-clip")
def train_clip_command(
    out: Path = typer.Argument(Path("teacher/clip"), help="Output folder (open_clip JSON + checkpoint), replaced."),
    steps: int = typer.Option(2000, min=1, help="Optimisation steps."),
    seed: int = typer.Option(0, help="Seed of the init, the scenes (stream 4) and the batches."),
    num_scenes: int = typer.Option(4000, min=1, help="Synthetic training scenes."),
    batch_size: int = typer.Option(32, min=2, help="Scenes per step."),
    lr: float = typer.Option(1e-3, min=0.0, help="Peak AdamW lr."),
    eval_scenes: int = typer.Option(200, min=2, help="Held-out scenes (stream 5) of the report in the model card."),
    threads: int = typer.Option(1, min=1, help="CPU threads (same seed and threads on CPU: same weights)."),
    terms: str = typer.Option("global,region,crop,predicate", help="Loss terms, comma-separated."),
) -> None:
    """Pre-train the embedded CLIP (tiny open_clip image + text towers) on synthetic scenes."""
    from stages.train_clip import run

    with exit_on(ValueError):
        run(out, steps=steps, seed=seed, num_scenes=num_scenes, batch_size=batch_size, lr=lr,
            eval_scenes=eval_scenes, threads=threads, terms=tuple(t.strip() for t in terms.split(",") if t.strip()))
    typer.echo(f"CLIP written to {out}/ (MODEL_CARD.md, training.json)")


@app.command("clip-report")
def clip_report_command(
    weights: Path = typer.Option(Path("teacher/clip"), help="CLIP folder (spade-tiny-clip.json + .safetensors)."),
    out: Path = typer.Option(Path("reports/clip"), help="Output folder (.md, .json, .png)."),
    json_file: Path | None = typer.Option(None, "--json", help="Also write the figures as JSON to this file."),
    num_scenes: int = typer.Option(200, min=2, help="Held-out synthetic scenes."),
) -> None:
    """Zero-shot crop accuracy (base / novel), caption retrieval, union-pooled predicate accuracy; trained vs init."""
    from stages.clip_report import run

    with exit_on(FileNotFoundError, ValueError):
        run(weights, out, num_scenes=num_scenes, json_path=json_file)


def main() -> None:
    with user_errors():  # expected errors of a command without its own handler: one line too
        app(prog_name="spade")


if __name__ == "__main__":
    sys.exit(main())
