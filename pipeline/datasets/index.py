"""The Parquet index that ``prepare`` writes (``<out_dir>/index/{train,test}.parquet``).

One row per image, with every annotation later stages need (they never re-parse psg.json):

| column | type | meaning |
|---|---|---|
| image_id | string | psg.json ``image_id`` |
| file_name | string | image path relative to the image root |
| pan_seg_file_name | string | panoptic PNG path relative to the image root |
| height, width | int32 | image size in pixels |
| num_segments, num_relations | int32 | lengths of the lists below |
| usable_for_calibration | bool | all objects and predicates are base under the split in use |
| segment_ids | list<int64> | panoptic ids (``R + 256 G + 256^2 B``), ``segments_info`` order |
| category_ids | list<int32> | index into ``thing_classes + stuff_classes`` |
| isthing | list<bool> | thing (True) or stuff segment |
| bboxes | list<fixed_size_list<float32, 4>> | ``[x1, y1, x2, y2]`` absolute pixels |
| relations | list<fixed_size_list<int32, 3>> | ``[s, o, p]``: segment indices, predicate id; no duplicates |

File metadata: ``image_root`` (absolute, or relative to the folder holding the Parquet file), ``source``,
``split``, ``index_version``. :func:`read_index` resolves paths so records load from any working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.datasets.panoptic import masks_from_ids, read_image, read_panoptic_png

INDEX_VERSION = "1"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("pan_seg_file_name", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("num_segments", pa.int32(), nullable=False),
        pa.field("num_relations", pa.int32(), nullable=False),
        pa.field("usable_for_calibration", pa.bool_(), nullable=False),
        pa.field("segment_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("category_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("isthing", pa.list_(pa.bool_()), nullable=False),
        pa.field("bboxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
        pa.field("relations", pa.list_(pa.list_(pa.int32(), 3)), nullable=False),
    ]
)


@dataclass(frozen=True)
class IndexRecord:
    """One image of the index. ``image_root`` is the resolved folder the two file names are relative to."""

    image_id: str
    file_name: str
    pan_seg_file_name: str
    height: int
    width: int
    segment_ids: list[int]
    category_ids: list[int]
    isthing: list[bool]
    bboxes: list[list[float]]
    relations: list[list[int]]
    usable_for_calibration: bool = False
    image_root: str = field(default="", compare=False)

    @property
    def image_path(self) -> Path:
        return Path(self.image_root) / self.file_name

    @property
    def panoptic_path(self) -> Path:
        return Path(self.image_root) / self.pan_seg_file_name

    def load_image(self) -> np.ndarray:
        """The image ``[H, W, 3]`` uint8 RGB."""
        return read_image(self.image_path)

    def load_panoptic(self) -> np.ndarray:
        """Segment masks ``[S, H, W]`` bool, aligned with ``segment_ids`` / ``category_ids``."""
        return masks_from_ids(read_panoptic_png(self.panoptic_path), self.segment_ids)

    def to_row(self) -> dict:
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "pan_seg_file_name": self.pan_seg_file_name,
            "height": self.height,
            "width": self.width,
            "num_segments": len(self.segment_ids),
            "num_relations": len(self.relations),
            "usable_for_calibration": self.usable_for_calibration,
            "segment_ids": list(self.segment_ids),
            "category_ids": list(self.category_ids),
            "isthing": list(self.isthing),
            "bboxes": [list(b) for b in self.bboxes],
            "relations": [list(r) for r in self.relations],
        }


def write_index(
    path: str | Path, records: list[IndexRecord], image_root: str, metadata: dict[str, str] | None = None
) -> None:
    """Write ``records`` to ``path`` with :data:`INDEX_SCHEMA`.

    ``image_root`` is stored as given (pass it absolute, or relative to ``path``'s folder).
    """
    table = pa.Table.from_pylist([r.to_row() for r in records], schema=INDEX_SCHEMA)
    meta = {"image_root": image_root, "index_version": INDEX_VERSION, **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in meta.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def index_metadata(path: str | Path) -> dict[str, str]:
    """The key/value metadata of an index file (``image_root`` as stored)."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def resolve_image_root(path: str | Path) -> str:
    """The image root of the index at ``path``; a relative root is taken relative to ``path``'s folder."""
    root = index_metadata(path).get("image_root")
    if root is None:
        raise ValueError(f"{path}: not a SPADE index (no 'image_root' in the Parquet metadata)")
    return root if os.path.isabs(root) else os.path.normpath(Path(path).parent / root)


def read_index_table(path: str | Path) -> pa.Table:
    """The index as a ``pyarrow.Table`` (schema checked against :data:`INDEX_SCHEMA`)."""
    table = pq.read_table(path)
    if not table.schema.equals(INDEX_SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: index schema differs from INDEX_SCHEMA:\n{table.schema}")
    return table


def read_index(path: str | Path) -> list[IndexRecord]:
    """The index as :class:`IndexRecord` objects with resolved ``image_root``."""
    root = resolve_image_root(path)
    rows = read_index_table(path).to_pylist()
    return [
        IndexRecord(
            image_id=r["image_id"],
            file_name=r["file_name"],
            pan_seg_file_name=r["pan_seg_file_name"],
            height=r["height"],
            width=r["width"],
            segment_ids=r["segment_ids"],
            category_ids=r["category_ids"],
            isthing=r["isthing"],
            bboxes=r["bboxes"],
            relations=r["relations"],
            usable_for_calibration=r["usable_for_calibration"],
            image_root=root,
        )
        for r in rows
    ]
