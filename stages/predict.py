"""``spade predict IMAGE... [--objects FILE] [--predicates FILE]``: scene graphs for any image files.

The classifier is open-vocabulary: with ``--objects`` / ``--predicates`` (text files, one name per line) the
names are embedded with the CLIP text encoder and the model classifies against them instead of the dataset's
vocabulary. Writes, per image, ``<out>/<stem>.png`` (masks, or boxes for a model trained on VG, + top triplets)
and ``<out>/<stem>.json`` (the scene graph: objects with class, score and box; triplets ranked by score).

``dtype`` (``float32`` | ``bfloat16`` | ``float16``) is that of the UNet, VAE and text encoder, as
``model.dtype`` in the stages; the PSG head and CLIP stay float32. The classification sources (paper Table 7)
are ``evaluate.alpha`` / ``use_diffusion_logits`` / ``use_pooled_logits`` of ``params.yaml``. Images are shown
upright (EXIF orientation applied); objects scoring below ``--min-score`` or with an empty region are left out,
with the triplets that involve them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np

from pipeline import paths
from pipeline.datasets.classes import read_classes
from pipeline.datasets.panoptic import read_image
from pipeline.images import to_tensor
from pipeline.io import atomic_write_text
from pipeline.models import load_models, resolve_device
from pipeline.params import EvaluateParams, ModelParams, load_params
from pipeline.psg_model import inference_config, keep_detections, load_trained
from pipeline.tables import boxes_from_masks
from pipeline.visualise import render_scene_graph, save_png

MIN_SCORE = 0.01  # objects below this score (and with an empty region) are not detections: left out


def read_vocabulary(path: Path | None, default: list[str], what: str) -> list[str]:
    if path is None:
        return list(default)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} vocabulary {path}: file not found")
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{what} vocabulary {path} is empty: give one class name per line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} vocabulary {path}: {repeated} listed more than once (each name once)")
    return names


def resolve_runtime(device: str, dtype: str) -> tuple[str, str]:
    """``--device`` / ``--dtype`` checked against the values ``model.device`` / ``model.dtype`` accept; ``auto``
    resolved. A bad value, or ``cuda`` without a CUDA device, is a ValueError."""
    devices, dtypes = (get_args(ModelParams.model_fields[k].annotation) for k in ("device", "dtype"))
    if dtype not in dtypes or device not in devices:
        raise ValueError(f"--device {device!r} / --dtype {dtype!r}: {'|'.join(devices)} and {'|'.join(dtypes)}")
    try:
        return str(resolve_device(device)), dtype
    except RuntimeError as err:  # cuda asked for, none available
        raise ValueError(f"--device {device}: {err}") from None


def check_outputs(images: list[Path], out_dir: Path) -> None:
    """Refuse, before any work, an ``--out`` that is a file and inputs that would write the same output."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    seen: dict[str, Path] = {}
    for path in images:
        other = seen.setdefault(Path(path).stem, Path(path))
        if other != Path(path):
            raise ValueError(f"{other} and {path} would both write {out_dir / Path(path).stem}.{{png,json}}: "
                             "rename one, or run them with different --out folders")


def scene_graph(pred: dict, object_names: list[str], predicate_names: list[str]) -> dict:
    """The JSON scene graph of one prediction (mask or box model: boxes from the masks, or the predicted ones)."""
    boxes = boxes_from_masks(pred["masks"]) if "masks" in pred else np.asarray(pred["boxes"], dtype=float)
    return {
        "objects": [
            {"index": i, "class": object_names[int(c)], "score": round(float(s), 4), "box_xyxy": boxes[i].tolist()}
            for i, (c, s) in enumerate(zip(pred["labels"], pred["scores"]))
        ],
        "triplets": [
            {
                "rank": r,
                "subject": int(s),
                "predicate": predicate_names[int(p)],
                "object": int(o),
                "text": f"{object_names[int(pred['labels'][int(s)])]} {predicate_names[int(p)]} "
                f"{object_names[int(pred['labels'][int(o)])]}",
                "score": round(float(sc), 5),
            }
            for r, (s, o, p, sc) in enumerate(pred["triplets"])
        ],
    }


def predict_files(
    images: list[Path],
    out_dir: Path,
    objects: Path | None = None,
    predicates: Path | None = None,
    top_k: int = 5,
    max_triplets: int = 100,
    device: str = "cpu",
    dtype: str = "float32",
    min_score: float = MIN_SCORE,
) -> list[Path]:
    check_outputs(images, out_dir)
    arrays = []
    for path in images:
        try:
            arrays.append(read_image(path, exif_orientation=True))
        except Exception as err:  # PIL raises several types for unreadable files
            raise ValueError(f"{path}: cannot read image ({err})") from None
    if not Path(paths.CLASSES_JSON).is_file():
        raise FileNotFoundError(f"{paths.CLASSES_JSON} not found under {Path.cwd()}: run `spade predict` in the "
                                "project folder, after `dvc repro train`")
    classes = read_classes(paths.CLASSES_JSON)
    object_names = read_vocabulary(objects, classes.object_names, "object")
    predicate_names = read_vocabulary(predicates, classes.predicate_names, "predicate")
    # the classification sources of params.yaml's evaluate section (its defaults outside a project folder)
    ev = load_params().evaluate if Path("params.yaml").is_file() else EvaluateParams()
    trained = load_trained(load_models(paths.MODELS, device=device, dtype=dtype), inference_config(ev))
    obj_text, pred_text = trained.vocabulary_embeddings(object_names, predicate_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    size = trained.config["image_size"]
    for path, image in zip(images, arrays):
        batch = to_tensor(image, size)[None]
        pred = trained.predict(batch, [image.shape[:2]], obj_text, pred_text, max_triplets)[0]
        pred = keep_detections(pred, min_score)
        graph = scene_graph(pred, object_names, predicate_names)
        stem = out_dir / Path(path).stem
        picture = render_scene_graph(
            image, pred.get("masks"), pred["labels"], pred["triplets"], object_names, predicate_names,
            top_k=top_k, title=Path(path).name, boxes=pred.get("boxes"),
        )  # fmt: skip
        save_png(np.asarray(picture), stem.with_suffix(".png"))  # the PNG first: a JSON is never left without it
        atomic_write_text(stem.with_suffix(".json"), json.dumps(graph, indent=2) + "\n")
        written.append(stem.with_suffix(".json"))
    return written
