"""The Parquet index that ``prepare`` writes (``<out_dir>/index/{train,test}.parquet``).

One row per image, with every annotation later stages need (they never re-parse psg.json or the VG h5).
A record's objects ("segments" below) are either panoptic segments (PSG, synthetic: ``annotation`` ``panoptic``)
or boxes only (Visual Genome: ``annotation`` ``boxes``, ``pan_seg_file_name`` empty, ``segment_ids`` empty).

| column | type | meaning |
|---|---|---|
| image_id | string | psg.json / image_data.json ``image_id`` |
| file_name | string | image path relative to the image root |
| pan_seg_file_name | string | panoptic PNG path relative to the image root; ``""`` for a box record |
| height, width | int32 | image size in pixels |
| num_segments, num_relations | int32 | number of objects (``len(category_ids)``) and of relations |
| usable_for_calibration | bool | all objects and predicates are base under the split in use |
| segment_ids | list<int64> | panoptic ids (``R + 256 G + 256^2 B``), ``segments_info`` order; ``[]`` for boxes |
| category_ids | list<int32> | index into ``thing_classes + stuff_classes`` |
| isthing | list<bool> | thing (True) or stuff object |
| bboxes | list<fixed_size_list<float32, 4>> | ``[x1, y1, x2, y2]`` absolute pixels, exclusive ends |
| relations | list<fixed_size_list<int32, 3>> | ``[s, o, p]``: object indices, predicate id (PSG: no duplicates) |

VG test records keep every relation of the file (duplicates and several predicates per pair included).

File metadata: ``image_root`` (absolute, or relative to the folder holding the Parquet file), ``source``,
``split``, ``index_version``, ``annotation`` (``panoptic`` | ``boxes``, written by ``prepare``; when present,
:func:`write_index` and :func:`read_index` check every record agrees). :func:`read_index` resolves paths so
records load from any working directory.

Annotation kind: :attr:`IndexRecord.annotation` is derived from the row itself (``boxes`` when
``pan_seg_file_name`` is empty, else ``panoptic``), so a record carries it without the file metadata.
:meth:`IndexRecord.load_regions` gives one boolean region per object for either kind: the panoptic masks, or the
boxes rasterised (:func:`box_regions`). :meth:`IndexRecord.load_panoptic` on a box record raises
:class:`AnnotationError`.

Version history: ``1`` PSG only (``num_segments`` = ``len(segment_ids)``); ``2`` box records, ``num_segments``
= ``len(category_ids)`` (the same value for panoptic records), the ``annotation`` metadata key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.datasets.panoptic import masks_from_ids, read_image, read_panoptic_png

INDEX_VERSION = "2"
ANNOTATIONS = ("panoptic", "boxes")

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


class AnnotationError(ValueError):
    """An operation that needs an annotation kind the record does not have (panoptic masks of a box record)."""


def box_regions(bboxes: list[list[float]] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes ``[S, 4]`` ``(x1, y1, x2, y2)`` (pixels, exclusive ends) rasterised to regions ``[S, H, W]`` bool.

    Pixel ``(y, x)`` is inside a box iff ``x1 <= x + 0.5 < x2`` and ``y1 <= y + 0.5 < y2`` (its centre lies in
    the half-open box). A box covering no pixel centre gets the one pixel containing its centre
    (``floor((x1 + x2) / 2)``, ``floor((y1 + y2) / 2)``, clipped to the image), so no region is empty.
    """
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    in_x = (boxes[:, None, 0] <= xs) & (xs < boxes[:, None, 2])  # [S, W]
    in_y = (boxes[:, None, 1] <= ys) & (ys < boxes[:, None, 3])  # [S, H]
    regions = in_y[:, :, None] & in_x[:, None, :]
    for k in np.flatnonzero(~regions.any(axis=(1, 2))):
        x1, y1, x2, y2 = boxes[k]
        cx = int(np.clip(np.floor((x1 + x2) / 2), 0, width - 1))
        cy = int(np.clip(np.floor((y1 + y2) / 2), 0, height - 1))
        regions[k, cy, cx] = True
    return regions


@dataclass(frozen=True)
class IndexRecord:
    """One image of the index. ``image_root`` is the resolved folder the two file names are relative to.

    A box record (Visual Genome) has ``pan_seg_file_name == ""`` and ``segment_ids == []``; its objects are
    ``category_ids`` / ``isthing`` / ``bboxes``.
    """

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

    @property
    def annotation(self) -> str:
        """``"boxes"`` (no panoptic PNG: ``pan_seg_file_name`` empty) or ``"panoptic"``."""
        return "panoptic" if self.pan_seg_file_name else "boxes"

    @property
    def num_objects(self) -> int:
        return len(self.category_ids)

    def load_panoptic(self) -> np.ndarray:
        """Segment masks ``[S, H, W]`` bool, aligned with ``segment_ids`` / ``category_ids``.

        Raises :class:`AnnotationError` for a box record (use :meth:`load_regions`).
        """
        if self.annotation != "panoptic":
            raise AnnotationError(
                f"image {self.image_id}: a box-annotated record (annotation 'boxes', e.g. Visual Genome) has no "
                "panoptic masks; use load_regions() for its rasterised boxes"
            )
        return masks_from_ids(read_panoptic_png(self.panoptic_path), self.segment_ids)

    def load_regions(self) -> np.ndarray:
        """One region per object ``[S, H, W]`` bool, aligned with ``category_ids``: the panoptic masks of a
        panoptic record, the rasterised ``bboxes`` of a box record (:func:`box_regions`)."""
        if self.annotation == "panoptic":
            return self.load_panoptic()
        return box_regions(self.bboxes, self.height, self.width)

    def to_row(self) -> dict:
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "pan_seg_file_name": self.pan_seg_file_name,
            "height": self.height,
            "width": self.width,
            "num_segments": len(self.category_ids),
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

    ``image_root`` is stored as given (pass it absolute, or relative to ``path``'s folder). A ``metadata``
    ``annotation`` must be one of :data:`ANNOTATIONS` and agree with every record's :attr:`IndexRecord.annotation`.
    """
    _check_annotation(records, (metadata or {}).get("annotation"), path)
    table = pa.Table.from_pylist([r.to_row() for r in records], schema=INDEX_SCHEMA)
    meta = {"image_root": image_root, "index_version": INDEX_VERSION, **(metadata or {})}
    table = table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in meta.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _check_annotation(records: list[IndexRecord], annotation: str | None, path: str | Path) -> None:
    if annotation is None:
        return
    if annotation not in ANNOTATIONS:
        raise ValueError(f"{path}: annotation must be one of {ANNOTATIONS}, got {annotation!r}")
    other = next((r for r in records if r.annotation != annotation), None)
    if other is not None:
        raise ValueError(
            f"{path}: image {other.image_id} is a {other.annotation!r} record in an index of annotation {annotation!r}"
        )


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
    records = [
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
    _check_annotation(records, index_metadata(path).get("annotation"), path)
    return records
