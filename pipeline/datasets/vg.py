"""Reading the Visual Genome VG-150 release (``VG-SGG(-with-attri).h5``, ``VG-SGG-dicts(-with-attri).json``,
``image_data.json``, an image folder) with the standard Scene-Graph-Benchmark loader semantics.

Files: the h5 holds every box and relation in global arrays (``labels`` ``[N_obj, 1]`` 1-based,
``boxes_1024`` ``[N_obj, 4]`` ``(cx, cy, w, h)`` in a frame whose long side is 1024, ``predicates``
``[N_rel, 1]`` 1-based, ``relationships`` ``[N_rel, 2]`` global box indices) and per-image inclusive ranges
(``img_to_first_box`` / ``img_to_last_box``, ``img_to_first_rel`` / ``img_to_last_rel``, -1 if none) with a
``split`` (0 train, 2 test). ``image_data.json`` is a list of ``{width, height, image_id, ...}``; once the four
corrupt images of the release (:data:`CORRUPT_IMAGE_IDS`) are dropped it is aligned index-for-index with the h5's
per-image arrays. The image of entry ``i`` is ``<image_root>/<image_id>.<image_ext>``.

Loader semantics (:meth:`VGReader.iter_split`):

* split ``test`` = ``split == 2``; ``train`` / ``val`` = ``split == 0``, ``val`` = the first ``num_val`` (5,000)
  kept split-0 images, ``train`` the rest. Kept = the image has boxes and (``filter_empty_rels``, default, also
  for test) relations.
* boxes: ``x1 = cx - w/2, y1 = cy - h/2, x2 = x1 + w, y2 = y1 + h``, times ``max(W, H) / 1024``, clipped to
  ``[0, W] x [0, H]`` (exclusive-end corners, as the project's PSG index; Scene-Graph-Benchmark clips to
  ``W - 1`` under its +1-pixel convention). The reference loader then drops boxes left empty in training; here
  a box not overlapping the image is an error, so no box is empty after clipping. Labels and predicates become
  0-based.
* train only: ``filter_non_overlap`` keeps the relations whose two boxes overlap (+1-pixel IoU > 0 in the 1024
  frame, as Scene-Graph-Benchmark) and drops images left without one; ``filter_duplicate_rels`` keeps one
  predicate per (subject, object) pair, drawn from the pair's predicates (with multiplicity) by
  ``default_rng([seed, h5 index])`` (so the choice is reproducible and independent of iteration order).
  Val and test keep every relation (duplicates and several predicates on one pair included).

Every kept image is validated; a problem raises :class:`~pipeline.datasets.psg.DatasetError` naming the image
id, the h5 index, the reason and the file: a box or relation range out of bounds, reversed, or with only one
end ``-1``; a relation whose boxes lie outside the image's box range; a label or predicate outside the
vocabulary; a box with ``w <= 0`` or ``h <= 0``, outside the 1024 frame, or not overlapping the image; a
missing or unreadable image; an image whose size differs from ``image_data.json`` (``size_mismatch="fail"``,
default; ``"use_file"`` takes the file's size and counts it). File-level problems (missing keys, arrays of
inconsistent lengths, ``image_data.json`` not aligned with the h5) raise at :class:`VGReader` construction.
``on_error="skip"`` records a bad image in ``skipped`` and goes on. Deviation from the reference loader: a
missing image file is a named error, never silently dropped from ``image_data.json`` (which would shift the
alignment of every later image).

Memory: the h5 is opened lazily with ``h5py``; only the per-image arrays (``N_img`` ints each) and the three
numbers per ``image_data.json`` entry are held; box and relation rows are read in blocks of
``block_rows`` around the image being read; images are opened one at a time, only to check them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from PIL import Image

from pipeline.datasets.panoptic import read_image
from pipeline.datasets.psg import DatasetError
from spade_core.eval.vg import box_iou_plus1

BOX_SCALE = 1024
CORRUPT_IMAGE_IDS = frozenset({1592, 1722, 4616, 4617})
NUM_VAL = 5000
SPLITS = ("train", "val", "test")
PER_IMAGE_KEYS = ("img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel", "split")
OBJECT_KEYS = ("labels", "boxes_1024")
RELATION_KEYS = ("predicates", "relationships")
H5_KEYS = OBJECT_KEYS + RELATION_KEYS + PER_IMAGE_KEYS
DICT_KEYS = ("idx_to_label", "idx_to_predicate")
FRAME_TOLERANCE = 1.0  # 1024-frame units a decoded corner may lie outside [0, 1024] (cx - w/2 with odd w)

OnError = Literal["fail", "skip"]
SizeMismatch = Literal["fail", "use_file"]


@dataclass(frozen=True)
class VGVocab:
    """The vocabularies of a dicts.json, 0-based (file index ``k`` -> position ``k - 1``)."""

    object_classes: tuple[str, ...]
    predicate_classes: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class VGRecord:
    """One image. ``boxes`` float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` original pixels; ``labels`` int64 ``[N]``
    0-based; ``relations`` int64 ``[R, 3]`` ``(subject, object, predicate)``, indices into ``boxes``."""

    index: int
    image_id: str
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    relations: np.ndarray
    split: str
    image_root: str = ""

    @property
    def image_path(self) -> Path:
        return Path(self.image_root) / self.file_name

    def load_image(self) -> np.ndarray:
        """The image ``[H, W, 3]`` uint8 RGB."""
        return read_image(self.image_path)


@dataclass
class VGSplit:
    """What :func:`read_vg_split` returns: records, skipped images (``image_id``, ``index``, ``reason``,
    ``file``) and counts."""

    records: list[VGRecord]
    skipped: list[dict[str, Any]]
    stats: dict[str, int]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetError(f"{what} not found", path=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{what} is not readable JSON: {err}", path=path) from None


def _names(raw: dict, key: str, path: Path) -> tuple[str, ...]:
    table = raw[key]
    if not isinstance(table, dict) or not table:
        raise DatasetError(f"dicts.json '{key}' must be a non-empty object", path=path)
    expected = [str(k) for k in range(1, len(table) + 1)]
    if sorted(table, key=lambda k: (len(k), k)) != expected:
        raise DatasetError(f"dicts.json '{key}' keys must be the strings '1'..'{len(table)}'", path=path)
    names = tuple(table[k] for k in expected)
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DatasetError(f"dicts.json '{key}' values must be distinct non-empty names", path=path)
    return names


def load_vg_dicts(path: str | Path) -> VGVocab:
    """Read ``VG-SGG-dicts(-with-attri).json``: ``idx_to_label`` and ``idx_to_predicate`` with string keys."""
    path = Path(path)
    raw = _read_json(path, "dicts.json")
    if not isinstance(raw, dict):
        raise DatasetError("dicts.json must hold a JSON object", path=path)
    missing = [k for k in DICT_KEYS if k not in raw]
    if missing:
        raise DatasetError(f"dicts.json lacks keys {missing}", path=path)
    return VGVocab(_names(raw, "idx_to_label", path), _names(raw, "idx_to_predicate", path))


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def load_image_data(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image_data.json`` without the corrupt images: ``image_id``, ``width``, ``height`` int64 arrays.

    An entry with a missing or non-positive field gets ``-1`` there (reported per image by the reader).
    """
    path = Path(path)
    raw = _read_json(path, "image_data.json")
    if not isinstance(raw, list):
        raise DatasetError("image_data.json must hold a list", path=path)
    ids, widths, heights = [], [], []
    for entry in raw:
        if not isinstance(entry, dict):
            entry = {}
        image_id = entry.get("image_id")
        if _positive_int(image_id) and image_id in CORRUPT_IMAGE_IDS:
            continue
        ids.append(image_id if _positive_int(image_id) else -1)
        widths.append(entry["width"] if _positive_int(entry.get("width")) else -1)
        heights.append(entry["height"] if _positive_int(entry.get("height")) else -1)
    return np.asarray(ids, np.int64), np.asarray(widths, np.int64), np.asarray(heights, np.int64)


class _Rows:
    """Row ranges ``[a, b)`` of a 1-D/2-D h5 dataset, read in blocks (sequential access stays in memory)."""

    def __init__(self, dataset: h5py.Dataset, block_rows: int) -> None:
        self.dataset, self.block = dataset, block_rows
        self.start, self.rows = 0, np.zeros((0, *dataset.shape[1:]), dtype=dataset.dtype)

    def __call__(self, a: int, b: int) -> np.ndarray:
        if not (self.start <= a and b <= self.start + len(self.rows)):
            end = min(len(self.dataset), max(b, a + self.block))
            self.start, self.rows = a, self.dataset[a:end]
        return self.rows[a - self.start : b - self.start]


def _image_size(path: Path) -> tuple[int, int]:
    """The size of an image file, after decoding it fully (catches truncated and corrupt files)."""
    try:
        with Image.open(path) as im:
            size = im.size
            if im.format == "JPEG":  # decode at 1/8 scale: reads the whole stream, catches truncation
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
            return size
    except FileNotFoundError:
        raise DatasetError("image file missing", path=path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"image unreadable: {err}", path=path) from None


class VGReader:
    """An opened VG-150 triple (see the module doc). Use as a context manager or call :meth:`close`.

    Args:
        h5_path, dicts_path, image_data_path: the three files. image_root: the image folder.
        image_ext: image file extension (``jpg`` for the release).
        check_images: open each image to check it exists, decodes and has the ``image_data.json`` size
            (False: trust ``image_data.json``, e.g. for a boxes-only benchmark file).
        size_mismatch: ``"fail"`` (an error) or ``"use_file"`` (the file's size is used and counted).
        block_rows: rows of the box / relation arrays read at once.
    """

    def __init__(
        self,
        h5_path: str | Path,
        dicts_path: str | Path,
        image_data_path: str | Path,
        image_root: str | Path,
        image_ext: str = "jpg",
        check_images: bool = True,
        size_mismatch: SizeMismatch = "fail",
        block_rows: int = 65536,
    ) -> None:
        if size_mismatch not in ("fail", "use_file"):
            raise ValueError(f"size_mismatch must be 'fail' or 'use_file', got {size_mismatch!r}")
        self.h5_path, self.image_root = Path(h5_path), Path(image_root)
        self.image_ext, self.check_images, self.size_mismatch = image_ext.lstrip("."), check_images, size_mismatch
        self.vocab = load_vg_dicts(dicts_path)
        self.image_ids, self.widths, self.heights = load_image_data(image_data_path)
        if not self.h5_path.is_file():
            raise DatasetError("h5 file not found", path=self.h5_path)
        try:
            self._h5 = h5py.File(self.h5_path, "r")
        except OSError as err:
            raise DatasetError(f"h5 file unreadable: {err}", path=self.h5_path) from None
        try:
            self._check_layout(Path(image_data_path))
        except DatasetError:
            self.close()
            raise
        self.per_image = {k: self._h5[k][:].astype(np.int64).reshape(-1) for k in PER_IMAGE_KEYS}
        self._labels = _Rows(self._h5["labels"], block_rows)
        self._boxes = _Rows(self._h5["boxes_1024"], block_rows)
        self._predicates = _Rows(self._h5["predicates"], block_rows)
        self._relationships = _Rows(self._h5["relationships"], block_rows)

    def _check_layout(self, image_data_path: Path) -> None:
        h5, path = self._h5, self.h5_path
        missing = [k for k in H5_KEYS if k not in h5 or not isinstance(h5[k], h5py.Dataset)]
        if missing:
            raise DatasetError(f"h5 lacks datasets {missing}", path=path)
        for key, width in (("labels", 1), ("boxes_1024", 4), ("predicates", 1), ("relationships", 2)):
            shape = h5[key].shape
            if not (len(shape) == 2 and shape[1] == width) and not (width == 1 and len(shape) == 1):
                raise DatasetError(f"h5 '{key}' must have shape [N, {width}], got {list(shape)}", path=path)
        for key in PER_IMAGE_KEYS:
            if len(h5[key].shape) != 1:
                raise DatasetError(f"h5 '{key}' must be 1-D, got shape {list(h5[key].shape)}", path=path)
        for key in H5_KEYS:
            if not np.issubdtype(h5[key].dtype, np.integer):
                raise DatasetError(f"h5 '{key}' must hold integers, got {h5[key].dtype}", path=path)
        for group in (OBJECT_KEYS, RELATION_KEYS, PER_IMAGE_KEYS):
            lengths = {k: h5[k].shape[0] for k in group}
            if len(set(lengths.values())) != 1:
                raise DatasetError(f"h5 arrays of inconsistent lengths: {lengths}", path=path)
        self.num_images, self.num_objects = h5["split"].shape[0], h5["labels"].shape[0]
        self.num_relations = h5["predicates"].shape[0]
        if len(self.image_ids) != self.num_images:
            raise DatasetError(
                f"image_data.json has {len(self.image_ids)} entries (without the corrupt images "
                f"{sorted(CORRUPT_IMAGE_IDS)}) but the h5 {path} has {self.num_images} images",
                path=image_data_path,
            )

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> VGReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def split_indices(self, split: str, num_val: int = NUM_VAL, filter_empty_rels: bool = True) -> np.ndarray:
        """h5 indices of the images of ``split`` (before validation and the train-only relation filters)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_val < 0:
            raise ValueError(f"num_val must be >= 0, got {num_val}")
        p = self.per_image
        keep = p["split"] == (2 if split == "test" else 0)
        keep &= (p["img_to_first_box"] >= 0) | (p["img_to_last_box"] >= 0)  # one-sided -1: an error later
        if filter_empty_rels:
            keep &= (p["img_to_first_rel"] >= 0) | (p["img_to_last_rel"] >= 0)
        index = np.nonzero(keep)[0]
        if split == "val":
            return index[:num_val]
        if split == "train":
            return index[num_val:]
        return index

    def _error(self, index: int, reason: str, path: Path | None = None) -> DatasetError:
        image_id = str(self.image_ids[index]) if self.image_ids[index] > 0 else None
        return DatasetError(f"h5 index {index}: {reason}", image_id, path or self.h5_path)

    def _range(self, index: int, kind: str, upper: int) -> tuple[int, int]:
        first = int(self.per_image[f"img_to_first_{kind}"][index])
        last = int(self.per_image[f"img_to_last_{kind}"][index])
        where = f"img_to_first_{kind} = {first}, img_to_last_{kind} = {last}"
        if first == -1 and last == -1:
            return 0, 0
        if first == -1 or last == -1:
            raise self._error(index, f"{kind} range has one end -1 ({where})")
        if first < 0 or last < first:
            raise self._error(index, f"{kind} range is negative or reversed ({where})")
        if last >= upper:
            noun = "boxes" if kind == "box" else "relations"
            raise self._error(index, f"{kind} range out of bounds ({where}, the h5 has {upper} {noun})")
        return first, last + 1

    def _file_size(self, index: int, width: int, height: int) -> tuple[int, int, bool]:
        file_name = f"{self.image_ids[index]}.{self.image_ext}"
        path = self.image_root / file_name
        try:
            size = _image_size(path)
        except DatasetError as err:
            raise self._error(index, err.reason, path) from None
        if size != (width, height):
            if self.size_mismatch == "fail":
                raise self._error(
                    index, f"image size {size[0]}x{size[1]} differs from image_data.json's {width}x{height}", path
                )
            return size[0], size[1], True
        return width, height, False

    def read(
        self,
        index: int,
        split: str = "test",
        filter_duplicate_rels: bool = True,
        filter_non_overlap: bool = True,
        seed: int = 0,
        stats: dict[str, int] | None = None,
    ) -> VGRecord | None:
        """Validate and decode the image at h5 ``index`` as a member of ``split`` (filters apply to ``train``).

        Returns None when the train-only filters leave the image without a relation. Raises DatasetError.
        """
        stats = {} if stats is None else stats
        index = int(index)
        if not 0 <= index < self.num_images:
            raise IndexError(f"h5 index {index} out of range [0, {self.num_images})")
        if self.image_ids[index] <= 0:
            raise self._error(index, "image_data.json entry lacks a positive integer 'image_id'")
        width, height = int(self.widths[index]), int(self.heights[index])
        if width <= 0 or height <= 0:
            raise self._error(index, "image_data.json entry lacks positive integer 'width' / 'height'")
        b0, b1 = self._range(index, "box", self.num_objects)
        r0, r1 = self._range(index, "rel", self.num_relations)
        if b1 == 0:
            raise self._error(index, "image has no box")
        labels = self._labels(b0, b1).reshape(-1).astype(np.int64)
        frame = self._boxes(b0, b1).reshape(-1, 4).astype(np.float64)
        predicates = self._predicates(r0, r1).reshape(-1).astype(np.int64)
        pairs = self._relationships(r0, r1).reshape(-1, 2).astype(np.int64)

        bad = np.nonzero((labels < 1) | (labels > len(self.vocab.object_classes)))[0]
        if bad.size:
            raise self._error(
                index,
                f"labels[{b0 + bad[0]}] = {labels[bad[0]]} outside the vocabulary 1..{len(self.vocab.object_classes)}",
            )
        bad = np.nonzero((predicates < 1) | (predicates > len(self.vocab.predicate_classes)))[0]
        if bad.size:
            raise self._error(
                index,
                f"predicates[{r0 + bad[0]}] = {predicates[bad[0]]} outside the vocabulary "
                f"1..{len(self.vocab.predicate_classes)}",
            )
        bad = np.nonzero(((pairs < b0) | (pairs >= b1)).any(axis=1))[0]
        if bad.size:
            raise self._error(
                index,
                f"relationships[{r0 + bad[0]}] = {pairs[bad[0]].tolist()} refers to a box "
                f"outside the image's box range [{b0}, {b1 - 1}]",
            )
        bad = np.nonzero((frame[:, 2] <= 0) | (frame[:, 3] <= 0))[0]
        if bad.size:
            raise self._error(index, f"boxes_1024[{b0 + bad[0]}] = {frame[bad[0]].tolist()} has width or height <= 0")
        corners = np.concatenate([frame[:, :2] - frame[:, 2:] / 2, frame[:, :2] + frame[:, 2:] / 2], axis=1)
        bad = np.nonzero(((corners < -FRAME_TOLERANCE) | (corners > BOX_SCALE + FRAME_TOLERANCE)).any(axis=1))[0]
        if bad.size:
            raise self._error(
                index, f"boxes_1024[{b0 + bad[0]}] = {frame[bad[0]].tolist()} lies outside the {BOX_SCALE} frame"
            )

        if self.check_images:
            width, height, changed = self._file_size(index, width, height)
            stats["size_from_file"] = stats.get("size_from_file", 0) + changed
        boxes = corners * (max(width, height) / BOX_SCALE)
        bad = np.nonzero((boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))[0]
        if bad.size:
            raise self._error(
                index,
                f"boxes_1024[{b0 + bad[0]}] = {frame[bad[0]].tolist()} lies outside the "
                f"{width}x{height} image (box {boxes[bad[0]].round(2).tolist()})",
            )
        relations = np.column_stack([pairs - b0, predicates - 1]).astype(np.int64).reshape(-1, 3)
        labels = labels - 1

        if split == "train" and filter_non_overlap:
            overlap = box_iou_plus1(corners, corners)[relations[:, 0], relations[:, 1]] > 0
            stats["relations_removed_non_overlap"] = stats.get("relations_removed_non_overlap", 0) + int(
                (~overlap).sum()
            )
            relations = relations[overlap]
            if relations.shape[0] == 0:
                stats["images_dropped_non_overlap"] = stats.get("images_dropped_non_overlap", 0) + 1
                return None
        if split == "train" and filter_duplicate_rels:
            n = relations.shape[0]
            relations = _one_predicate_per_pair(relations, np.random.default_rng([seed, index]))
            stats["relations_removed_duplicate"] = stats.get("relations_removed_duplicate", 0) + n - len(relations)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return VGRecord(
            index=index,
            image_id=str(self.image_ids[index]),
            file_name=f"{self.image_ids[index]}.{self.image_ext}",
            width=width,
            height=height,
            boxes=boxes.astype(np.float32),
            labels=labels,
            relations=relations.astype(np.int64).reshape(-1, 3),
            split=split,
            image_root=str(self.image_root),
        )

    def iter_split(
        self,
        split: str,
        on_error: OnError = "fail",
        num_val: int = NUM_VAL,
        filter_empty_rels: bool = True,
        filter_duplicate_rels: bool = True,
        filter_non_overlap: bool = True,
        seed: int = 0,
        skipped: list[dict[str, Any]] | None = None,
        stats: dict[str, int] | None = None,
    ) -> Iterator[VGRecord]:
        """The records of ``split`` in h5 order, one at a time (the module doc has the semantics).

        ``on_error="skip"`` appends ``{image_id, index, reason, file}`` to ``skipped`` for a bad image;
        ``stats`` (if given) accumulates counts.
        """
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        stats = {} if stats is None else stats
        for index in self.split_indices(split, num_val, filter_empty_rels):
            stats["images_selected"] = stats.get("images_selected", 0) + 1
            try:
                record = self.read(index, split, filter_duplicate_rels, filter_non_overlap, seed, stats)
            except DatasetError as err:
                if on_error == "fail":
                    raise
                stats["images_skipped"] = stats.get("images_skipped", 0) + 1
                if skipped is not None:
                    skipped.append(
                        {"image_id": err.image_id, "index": int(index), "reason": err.reason, "file": err.path}
                    )
                continue
            if record is not None:
                stats["images"] = stats.get("images", 0) + 1
                yield record


def read_vg_split(
    h5_path: str | Path,
    dicts_path: str | Path,
    image_data_path: str | Path,
    image_root: str | Path,
    split: str,
    on_error: OnError = "fail",
    num_val: int = NUM_VAL,
    filter_empty_rels: bool = True,
    filter_duplicate_rels: bool = True,
    filter_non_overlap: bool = True,
    seed: int = 0,
    image_ext: str = "jpg",
    check_images: bool = True,
    size_mismatch: SizeMismatch = "fail",
) -> VGSplit:
    """Open the triple, read every record of ``split`` (see :class:`VGReader` and the module doc)."""
    skipped: list[dict[str, Any]] = []
    stats: dict[str, int] = {}
    with VGReader(h5_path, dicts_path, image_data_path, image_root, image_ext, check_images, size_mismatch) as r:
        records = list(
            r.iter_split(
                split,
                on_error,
                num_val,
                filter_empty_rels,
                filter_duplicate_rels,
                filter_non_overlap,
                seed,
                skipped,
                stats,
            )
        )
    for key in ("images_selected", "images", "images_skipped"):
        stats.setdefault(key, 0)
    return VGSplit(records, skipped, stats)


def _one_predicate_per_pair(relations: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``filter_duplicate_rels``: one row per (s, o) pair, the predicate drawn from the pair's rows (with
    multiplicity); pairs in order of first occurrence."""
    groups: dict[tuple[int, int], list[int]] = {}
    for s, o, p in relations.tolist():
        groups.setdefault((s, o), []).append(p)
    rows = [
        (s, o, preds[int(rng.integers(len(preds)))] if len(preds) > 1 else preds[0]) for (s, o), preds in groups.items()
    ]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


__all__ = [
    "BOX_SCALE",
    "CORRUPT_IMAGE_IDS",
    "NUM_VAL",
    "DatasetError",
    "VGReader",
    "VGRecord",
    "VGSplit",
    "VGVocab",
    "load_image_data",
    "load_vg_dicts",
    "read_vg_split",
]
