"""Where every stage reads and writes, relative to the working directory (the repository root under DVC).

Paths are fixed (not parameters) so that ``dvc.yaml`` can name each stage's outputs literally.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import TINY_CLIP_CHECKPOINT, TINY_SD_PATH

REPO_ROOT = Path(__file__).resolve().parents[1]
# the embedded models shipped with the project (the defaults of model.sd_path and model.clip_checkpoint): read
# where the code lives, not from the cwd
TEACHER_WEIGHTS = REPO_ROOT / TINY_SD_PATH
EMBEDDED_CLIP = (REPO_ROOT / TINY_CLIP_CHECKPOINT).parent

PREPARED = Path("data/prepared")
DATASET = PREPARED / "dataset"  # synthetic source only: the generated PSG-format release
INDEX = PREPARED / "index"  # train.parquet, test.parquet
CLASSES_JSON = PREPARED / "classes.json"
SPLIT_JSON = PREPARED / "split.json"
PREPARE_REPORT = PREPARED / "report.json"

MODELS = Path("artifacts/models")
MODELS_MANIFEST = MODELS / "manifest.json"

INVERT = Path("artifacts/invert")
INVERT_STORE = INVERT / "teacher.zarr"
INVERT_METRICS = Path("artifacts/invert_metrics.json")
INVERT_RUN = Path("artifacts/invert_run.json")  # timings, process count, teacher identity (not a DVC metric)

CALIBRATE = Path("artifacts/calibrate")
CALIBRATE_CHECKPOINTS = Path("artifacts/calibrate_checkpoints")
CALIBRATE_METRICS = Path("artifacts/calibrate_metrics.json")
CALIBRATE_RUN = Path("artifacts/calibrate_run.json")  # timings, memory, device, teacher identity
CALIBRATE_CURVE = Path("artifacts/calibrate_curve.csv")

TRAIN = Path("artifacts/train")
TRAIN_CHECKPOINTS = Path("artifacts/train_checkpoints")
FEATURE_CACHE = Path("artifacts/feature_cache")
TRAIN_CURVE = Path("artifacts/train_curve.csv")

EVALUATE = Path("artifacts/evaluate")
EVALUATE_METRICS = Path("artifacts/metrics.json")
EVALUATE_PLOTS = Path("artifacts/per_predicate_recall.csv")

# `spade ablate` (committed results; logs ignored by git)
ABLATIONS_JSON = Path("reports/ablations.json")
ABLATIONS_MD = Path("reports/ablations.md")
ABLATION_RUNS = Path("reports/ablations/runs")
ABLATION_LOGS = Path("artifacts/ablation_logs")
INSPECTIONS = Path("artifacts/inspections")  # spade inspect-maps pictures (user output, never inside a DVC output)


def index_path(split: str) -> Path:
    """Parquet index of one dataset split (``train`` or ``test``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return INDEX / f"{split}.parquet"
