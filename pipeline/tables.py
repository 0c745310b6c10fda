"""Parquet tables written by ``evaluate`` (explicit pyarrow schemas, documented in the README).

``triplets.parquet``: one row per ranked predicted triplet of a test image. Masks are COCO RLE (compressed
``counts`` string; decode with ``pycocotools.mask.decode({"size": [height, width], "counts": ...})``); a box
model (VG) has no masks: its RLE columns are empty strings and the box columns hold its predicted boxes.
``metrics.parquet``: one row per (setting, metric, K).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from pipeline.io import atomic_write_bytes
from spade_core.eval import boxes_from_masks

__all__ = [
    "METRICS_SCHEMA",
    "TRIPLETS_SCHEMA",
    "boxes_from_masks",  # spade_core.eval's, re-exported for stages/predict.py
    "concat_columns",
    "decode_rle",
    "encode_rle",
    "read_table",
    "triplet_rows",
    "write_table",
]

TRIPLETS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("subject_index", pa.int32(), nullable=False),
        pa.field("object_index", pa.int32(), nullable=False),
        pa.field("subject_class", pa.int32(), nullable=False),
        pa.field("subject_name", pa.string(), nullable=False),
        pa.field("object_class", pa.int32(), nullable=False),
        pa.field("object_name", pa.string(), nullable=False),
        pa.field("predicate", pa.int32(), nullable=False),
        pa.field("predicate_name", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("subject_box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("object_box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("subject_rle", pa.string(), nullable=False),
        pa.field("object_rle", pa.string(), nullable=False),
    ],
    metadata={"description": "SPADE ranked triplet predictions; masks as COCO RLE counts (pycocotools)"},
)

METRICS_SCHEMA = pa.schema(
    [
        pa.field("setting", pa.string(), nullable=False),  # closed | ovr | ovdr | spatial_dr | spatial_ndr
        pa.field("metric", pa.string(), nullable=False),  # R | mR
        pa.field("k", pa.int32(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),  # fraction in [0, 1]
        pa.field("num_images", pa.int32(), nullable=False),
    ]
)


def encode_rle(masks: np.ndarray) -> list[str]:
    """``masks`` bool [N,H,W] -> COCO compressed RLE ``counts`` strings."""
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.moveaxis(masks.astype(np.uint8), 0, -1))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(fortran)]


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    return mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def triplet_rows(
    image_id: str,
    pred: dict[str, np.ndarray],
    object_names: Sequence[str],
    predicate_names: Sequence[str],
    size: tuple[int, int] | None = None,
) -> dict[str, list[Any]]:
    """Columns for one image's ranked triplets.

    ``pred``: ``labels [N]``, ``triplets [T,4]`` (subject, object, predicate, score) and ``masks`` bool
    ``[N,H,W]`` or ``boxes`` float ``[N,4]`` xyxy pixels; ``size`` ``(H, W)`` is required with boxes.
    """
    labels, triplets = pred["labels"], pred["triplets"]
    if "masks" in pred:
        masks = pred["masks"]
        h, w = masks.shape[1:] if masks.ndim == 3 else (0, 0)
        rles, boxes = encode_rle(masks), boxes_from_masks(masks)
    else:
        if size is None:
            raise ValueError("triplet_rows: a box prediction needs the image size")
        (h, w), boxes = size, np.asarray(pred["boxes"], dtype=np.float32).reshape(-1, 4)
        rles = [""] * len(boxes)
    cols: dict[str, list[Any]] = {f.name: [] for f in TRIPLETS_SCHEMA}
    for rank, (s, o, p, score) in enumerate(np.asarray(triplets, dtype=np.float64)):
        s, o, p = int(s), int(o), int(p)
        cols["image_id"].append(image_id)
        cols["rank"].append(rank)
        cols["subject_index"].append(s)
        cols["object_index"].append(o)
        cols["subject_class"].append(int(labels[s]))
        cols["subject_name"].append(object_names[int(labels[s])])
        cols["object_class"].append(int(labels[o]))
        cols["object_name"].append(object_names[int(labels[o])])
        cols["predicate"].append(p)
        cols["predicate_name"].append(predicate_names[p])
        cols["score"].append(float(score))
        cols["subject_box"].append(boxes[s].tolist())
        cols["object_box"].append(boxes[o].tolist())
        cols["height"].append(int(h))
        cols["width"].append(int(w))
        cols["subject_rle"].append(rles[s])
        cols["object_rle"].append(rles[o])
    return cols


def write_table(columns: dict[str, list[Any]], schema: pa.Schema, path: Path) -> None:
    """Write atomically (temporary file + rename) with the explicit schema."""
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), buf)
    atomic_write_bytes(path, buf.getvalue().to_pybytes())


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    table = pq.read_table(path)
    if not table.schema.equals(schema, check_metadata=False):
        raise ValueError(f"{path}: schema does not match the expected one:\n{table.schema}\nexpected:\n{schema}")
    return table


def concat_columns(parts: Sequence[dict[str, list[Any]]], schema: pa.Schema) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {f.name: [] for f in schema}
    for part in parts:
        for k in out:
            out[k].extend(part[k])
    return out
