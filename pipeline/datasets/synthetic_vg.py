"""The embedded synthetic dataset written as a real Visual Genome VG-150-format triple.

The scenes are those of :mod:`pipeline.datasets.synthetic` (image ``i`` of split ``k``, train 0 / test 1, from
``SeedSequence([seed, k, i])``: the same scenes as the synthetic PSG-format dataset of the same seed). Every
segment (things and stuff bands) becomes a box: its visible mask's ``[x1, y1, x2, y2]`` (exclusive ends) with
its class; the scene's relations are kept as they are (several predicates on one pair included).

Output (``out_dir``), the release's layout and encodings:

* ``VG-SGG.h5``: ``labels`` int64 ``[N_obj, 1]`` and ``predicates`` int64 ``[N_rel, 1]`` (1-based, 0 is
  background), ``boxes_1024`` / ``boxes_512`` int32 ``[N_obj, 4]`` ``(cx, cy, w, h)`` in the frame whose long
  side is 1024 / 512 (the writer's encoding: ``x = floor(s x1)``, ``w = ceil(s (x2 - x1))``, clamped to the
  frame, ``cx = x + floor(w / 2)``), ``relationships`` int32 ``[N_rel, 2]`` (global box indices),
  ``img_to_first_box`` / ``img_to_last_box`` / ``img_to_first_rel`` / ``img_to_last_rel`` int32 ``[N_img]``
  (inclusive, -1 if none), ``split`` int32 (0 train, 2 test), ``active_object_mask`` bool ``[N_obj, 1]``.
* ``VG-SGG-dicts.json``: ``idx_to_label`` / ``idx_to_predicate`` (string keys ``"1"``..), ``label_to_idx`` /
  ``predicate_to_idx``, ``object_count`` / ``predicate_count``; the synthetic class names.
* ``image_data.json``: ``[{width, height, image_id, url, coco_id, flickr_id}]`` aligned with the h5.
* ``VG_100K/<image_id>.jpg`` (or ``.png``).

When ``1024 / image_size`` is an even integer (64, 128, 256, 512) the encoding is exact and the reader gives the
scene's boxes back unchanged. Same seed -> byte-identical files (h5 written with ``track_times=False`` and a
fixed ``libver``; JSON with a fixed key order; images without metadata).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.datasets.classes import load_class_lists
from pipeline.datasets.panoptic import write_png
from pipeline.datasets.synthetic import Scene, generate_scene

H5_NAME, DICTS_NAME, IMAGE_DATA_NAME, IMAGE_DIR = "VG-SGG.h5", "VG-SGG-dicts.json", "image_data.json", "VG_100K"
LIBVER = ("earliest", "v110")
JPEG_QUALITY = 95
IMAGE_FORMATS = ("jpg", "png")


@dataclass(frozen=True)
class VGFiles:
    """Paths of a written VG-format triple and its image folder."""

    h5: Path
    dicts: Path
    image_data: Path
    image_root: Path


def scene_boxes(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scene as VG-style annotations: boxes float64 ``[N, 4]`` (visible-mask boxes, exclusive ends),
    labels int64 ``[N]`` (0-based synthetic object classes), relations int64 ``[R, 3]`` (s, o, p)."""
    boxes = np.asarray([a["bbox"] for a in scene.annotations], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray([s["category_id"] for s in scene.segments_info], dtype=np.int64)
    relations = np.asarray(scene.relations, dtype=np.int64).reshape(-1, 3)
    return boxes, labels, relations


def encode_boxes(boxes: np.ndarray, width: int, height: int, frame: int = 1024) -> np.ndarray:
    """Corner boxes in pixels -> int32 ``(cx, cy, w, h)`` in the frame whose long side is ``frame``."""
    scale = frame / max(width, height)
    out = np.zeros((len(boxes), 4), dtype=np.int32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        x, y = max(0, math.floor(scale * x1)), max(0, math.floor(scale * y1))
        w, h = max(1, math.ceil(scale * (x2 - x1))), max(1, math.ceil(scale * (y2 - y1)))
        x, y = min(x, frame - 2), min(y, frame - 2)
        w, h = min(w, frame - x), min(h, frame - y)
        out[k] = (x + w // 2, y + h // 2, w, h)
    return out


def _write_image(path: Path, image: np.ndarray, image_format: str) -> None:
    if image_format == "png":
        write_png(path, image)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def generate_vg_dataset(
    out_dir: str | Path,
    seed: int,
    num_train: int,
    num_test: int,
    image_size: int = 128,
    min_objects: int = 2,
    max_objects: int = 5,
    image_format: str = "jpg",
    progress: bool = True,
) -> VGFiles:
    """Write the VG-format triple (layout in the module doc) under ``out_dir``.

    Image ids: ``1_000_000 + i`` (train) and ``2_000_000 + i`` (test); h5 order: train images, then test.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    out_dir = Path(out_dir)
    classes = load_class_lists("synthetic")
    labels, boxes_1024, boxes_512, predicates, relationships = [], [], [], [], []
    ranges: dict[str, list[int]] = {k: [] for k in ("first_box", "last_box", "first_rel", "last_rel", "split")}
    image_data = []
    num_obj = num_rel = 0
    jobs = [(0, i) for i in range(num_train)] + [(1, i) for i in range(num_test)]
    for k, i in tqdm(jobs, desc="generate synthetic VG", disable=not progress):
        scene = generate_scene(np.random.default_rng([seed, k, i]), image_size, min_objects, max_objects)
        boxes, lab, rel = scene_boxes(scene)
        image_id = (k + 1) * 1_000_000 + i
        _write_image(out_dir / IMAGE_DIR / f"{image_id}.{image_format}", scene.image, image_format)
        image_data.append(
            {
                "width": image_size,
                "height": image_size,
                "image_id": image_id,
                "url": f"{IMAGE_DIR}/{image_id}.{image_format}",
                "coco_id": None,
                "flickr_id": None,
            }
        )
        labels.append(lab + 1)
        boxes_1024.append(encode_boxes(boxes, image_size, image_size, 1024))
        boxes_512.append(encode_boxes(boxes, image_size, image_size, 512))
        predicates.append(rel[:, 2] + 1)
        relationships.append(rel[:, :2] + num_obj)
        ranges["first_box"].append(num_obj if len(lab) else -1)
        ranges["last_box"].append(num_obj + len(lab) - 1 if len(lab) else -1)
        ranges["first_rel"].append(num_rel if len(rel) else -1)
        ranges["last_rel"].append(num_rel + len(rel) - 1 if len(rel) else -1)
        ranges["split"].append(0 if k == 0 else 2)
        num_obj, num_rel = num_obj + len(lab), num_rel + len(rel)

    def cat(parts: list[np.ndarray], width: int, dtype: str) -> np.ndarray:
        return np.concatenate(
            [np.asarray(p).reshape(-1, width).astype(dtype) for p in parts] + [np.zeros((0, width), dtype=dtype)]
        )

    arrays = {
        "active_object_mask": np.ones((num_obj, 1), dtype=bool),
        "boxes_1024": cat(boxes_1024, 4, "int32"),
        "boxes_512": cat(boxes_512, 4, "int32"),
        "img_to_first_box": np.asarray(ranges["first_box"], dtype=np.int32),
        "img_to_first_rel": np.asarray(ranges["first_rel"], dtype=np.int32),
        "img_to_last_box": np.asarray(ranges["last_box"], dtype=np.int32),
        "img_to_last_rel": np.asarray(ranges["last_rel"], dtype=np.int32),
        "labels": cat(labels, 1, "int64"),
        "predicates": cat(predicates, 1, "int64"),
        "relationships": cat(relationships, 2, "int32"),
        "split": np.asarray(ranges["split"], dtype=np.int32),
    }
    return write_vg_files(out_dir, arrays, image_data, classes.object_classes, classes.predicate_classes)


def write_vg_files(
    out_dir: str | Path,
    arrays: dict[str, np.ndarray],
    image_data: list[dict],
    object_names: Sequence[str],
    predicate_names: Sequence[str],
) -> VGFiles:
    """Write a VG-format triple from its h5 ``arrays`` (the module doc's keys, dtypes and encodings), the
    ``image_data.json`` entries and the 0-based vocabularies; the dicts' counts are taken from ``arrays``.
    Deterministic bytes (``track_times=False``, fixed ``libver``, fixed JSON key order)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = VGFiles(out_dir / H5_NAME, out_dir / DICTS_NAME, out_dir / IMAGE_DATA_NAME, out_dir / IMAGE_DIR)
    files.h5.unlink(missing_ok=True)
    with h5py.File(files.h5, "w", libver=LIBVER, track_order=False) as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value, track_times=False)

    objects, preds = list(object_names), list(predicate_names)
    object_count = np.bincount(arrays["labels"].reshape(-1), minlength=len(objects) + 1)[1:]
    predicate_count = np.bincount(arrays["predicates"].reshape(-1), minlength=len(preds) + 1)[1:]
    dicts = {
        "idx_to_label": {str(j + 1): n for j, n in enumerate(objects)},
        "label_to_idx": {n: j + 1 for j, n in enumerate(objects)},
        "idx_to_predicate": {str(j + 1): n for j, n in enumerate(preds)},
        "predicate_to_idx": {n: j + 1 for j, n in enumerate(preds)},
        "object_count": {n: int(c) for n, c in zip(objects, object_count)},
        "predicate_count": {n: int(c) for n, c in zip(preds, predicate_count)},
    }
    files.dicts.write_text(json.dumps(dicts), encoding="utf-8")
    files.image_data.write_text(json.dumps(image_data), encoding="utf-8")
    return files
