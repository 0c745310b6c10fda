"""OvSGTR's open-vocabulary training filters for VG-150 (OvR, OvD, OvD+R) and its per-image box clean-up, as
pure functions on :class:`~pipeline.datasets.vg.VGRecord` (record in, new record or ``None`` out).

What OvSGTR (``datasets/vg.py``: ``load_graphs`` with ``keep_base_objects`` / ``keep_base_relations``,
``get_groundtruth``, ``__getitem__``) does to a **training** image, in this order:

1. OvD (:func:`filter_base_objects`): a box of a base class stays; a box of a novel class is relabelled to a
   random entry of its ``novel_to_base`` list when the list is non-empty, otherwise it is removed together with
   every relation touching it. The image is dropped when no relation or fewer than 2 boxes are left.
2. OvR (:func:`filter_base_relations`): relations whose predicate is novel are removed; the image is dropped
   when no relation is left (no box-count condition here: boxes are never removed by OvR).
3. ``filter_non_overlap`` (done by the reader; it is per relation and label-free, so it commutes with 1-2).
4. :func:`cap_objects`: an image with more than ``max_objects`` (100) boxes keeps a random subset of
   ``max_objects`` (in the drawn order) and the relations between kept boxes.
5. :func:`merge_same_class_boxes`: OvSGTR's greedy merge of same-class boxes with plain IoU > 0.9 (see there).
6. ``filter_duplicate_rels`` (:func:`filter_duplicate_relations`): one predicate per (subject, object) pair.
   OvSGTR does this **after** OvR, so read the training split with ``filter_duplicate_rels=False`` and let
   :func:`open_vocab_training_record` apply it (otherwise a pair with a base and a novel predicate can lose
   both: the reader may keep the novel one, which OvR then removes).
7. An image left without a relation is dropped (OvSGTR resamples another image in ``__getitem__``).

:func:`open_vocab_training_record` chains 1-7 for a mode ``closed | ovr | ovd | ovdr``. OvSGTR also applies
4-5 to val/test ground truth (``get_groundtruth`` runs for every split); Scene-Graph-Benchmark does not, and
neither does :func:`open_vocab_training_record` (call the two functions on test records if wanted).

Randomness: each draw uses ``numpy.random.default_rng([seed, record.index, stream])`` with a fixed stream per
step (relabel 1, cap 2), and the duplicate filter uses ``default_rng([seed, record.index])`` exactly as the
reader does, so the result depends only on the seed and the image, never on iteration order.

Small deviations, all from the reader's conventions: boxes are the reader's clipped original-pixel boxes (OvSGTR
merges the unclipped ones and clips afterwards); relations whose two ends merge into one box become self-loops
``(i, i, p)`` in OvSGTR; they are kept by default (``drop_self_loops=False``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.datasets.classes import read_data_file
from pipeline.datasets.vg import VGRecord, _one_predicate_per_pair

OpenVocabMode = Literal["closed", "ovr", "ovd", "ovdr"]
OPEN_VOCAB_MODES = ("closed", "ovr", "ovd", "ovdr")
MAX_OBJECTS = 100
MERGE_IOU = 0.9
_RELABEL_STREAM, _CAP_STREAM = 1, 2

__all__ = [
    "MAX_OBJECTS",
    "MERGE_IOU",
    "OPEN_VOCAB_MODES",
    "OpenVocabSplit",
    "box_iou",
    "cap_objects",
    "filter_base_objects",
    "filter_base_relations",
    "filter_duplicate_relations",
    "load_open_vocab_split",
    "merge_same_class_boxes",
    "open_vocab_training_record",
]


@dataclass(frozen=True)
class OpenVocabSplit:
    """A base/novel split as 0-based ids: ``novel_predicates``, ``novel_objects`` (frozensets) and
    ``novel_to_base`` (novel object id -> tuple of base object ids, possibly empty)."""

    novel_predicates: frozenset[int]
    novel_objects: frozenset[int]
    novel_to_base: Mapping[int, tuple[int, ...]]

    @classmethod
    def from_names(
        cls,
        raw: Mapping[str, Any],
        object_classes: Sequence[str],
        predicate_classes: Sequence[str],
    ) -> OpenVocabSplit:
        """From a ``vg_split.json``-shaped mapping (``novel_predicates``, ``novel_objects``, ``novel_to_base``
        by name). Raises ValueError naming any unknown name or a base target that is itself novel."""
        obj = {n: i for i, n in enumerate(object_classes)}
        pred = {n: i for i, n in enumerate(predicate_classes)}

        def ids(names: Iterable[str], table: dict[str, int], what: str) -> list[int]:
            names = list(names)
            unknown = [n for n in names if n not in table]
            if unknown:
                raise ValueError(f"open-vocabulary split: unknown {what} names {unknown}")
            return [table[n] for n in names]

        novel_p = frozenset(ids(raw["novel_predicates"], pred, "predicate"))
        novel_o = frozenset(ids(raw["novel_objects"], obj, "object"))
        mapping_raw = raw.get("novel_to_base", {})
        extra = [n for n in mapping_raw if n not in obj or obj[n] not in novel_o]
        if extra:
            raise ValueError(f"open-vocabulary split: novel_to_base keys {extra} are not novel objects")
        mapping: dict[int, tuple[int, ...]] = {}
        for name in raw["novel_objects"]:
            targets = ids(mapping_raw.get(name, []), obj, f"novel_to_base['{name}'] object")
            if any(t in novel_o for t in targets):
                raise ValueError(f"open-vocabulary split: novel_to_base['{name}'] lists a novel class")
            mapping[obj[name]] = tuple(targets)
        return cls(novel_p, novel_o, mapping)


def load_open_vocab_split(
    object_classes: Sequence[str] | None = None, predicate_classes: Sequence[str] | None = None
) -> OpenVocabSplit:
    """The packaged OvSGTR split (``pipeline/data/vg_split.json``) against the packaged VG-150 class lists
    (``vg_classes.json``) unless other lists are given."""
    if object_classes is None or predicate_classes is None:
        classes = read_data_file("vg_classes.json")
        object_classes = object_classes or classes["thing_classes"] + classes["stuff_classes"]
        predicate_classes = predicate_classes or classes["predicate_classes"]
    return OpenVocabSplit.from_names(read_data_file("vg_split.json"), object_classes, predicate_classes)


def _count(stats: dict[str, int] | None, key: str, n: int = 1) -> None:
    if stats is not None and n:
        stats[key] = stats.get(key, 0) + int(n)


def _subset(record: VGRecord, keep: np.ndarray, labels: np.ndarray | None = None) -> VGRecord:
    """The record restricted to boxes ``keep`` (int indices, in that order), relations between kept boxes
    re-indexed, the others removed; ``labels`` (for the kept boxes) replaces the labels if given."""
    keep = np.asarray(keep, dtype=np.int64)
    new_id = np.full(len(record.labels), -1, dtype=np.int64)
    new_id[keep] = np.arange(len(keep))
    rel = record.relations.reshape(-1, 3)
    s, o = new_id[rel[:, 0]], new_id[rel[:, 1]]
    ok = (s >= 0) & (o >= 0)
    relations = np.column_stack([s[ok], o[ok], rel[ok, 2]]).astype(np.int64).reshape(-1, 3)
    return dataclasses.replace(
        record,
        boxes=record.boxes[keep].reshape(-1, 4),
        labels=(record.labels[keep] if labels is None else np.asarray(labels, dtype=np.int64)).reshape(-1),
        relations=relations,
    )


def filter_base_relations(
    record: VGRecord, novel_predicates: Iterable[int], stats: dict[str, int] | None = None
) -> VGRecord | None:
    """OvR: remove the relations whose (0-based) predicate is novel; None when no relation is left.

    Boxes are untouched. ``stats`` counts ``relations_removed_ovr`` and ``images_dropped_ovr``.
    """
    novel = np.fromiter((int(p) for p in novel_predicates), dtype=np.int64)
    rel = record.relations.reshape(-1, 3)
    base = ~np.isin(rel[:, 2], novel)
    _count(stats, "relations_removed_ovr", int((~base).sum()))
    if not base.any():
        _count(stats, "images_dropped_ovr")
        return None
    return dataclasses.replace(record, relations=rel[base].copy())


def filter_base_objects(
    record: VGRecord,
    novel_objects: Iterable[int],
    novel_to_base: Mapping[int, Sequence[int]] | None = None,
    rng: np.random.Generator | None = None,
    stats: dict[str, int] | None = None,
) -> VGRecord | None:
    """OvD: keep base-class boxes; relabel a novel-class box to ``rng.choice(novel_to_base[label])`` when that
    list is non-empty, else remove it with its relations. None when fewer than 2 boxes or no relation is left.

    ``novel_to_base=None`` (or ``{}``) removes every novel box. ``rng`` is needed only for relabelling
    (default: ``default_rng([0, record.index, 1])``). Box order is kept. ``stats`` counts
    ``boxes_relabelled_ovd``, ``boxes_removed_ovd``, ``relations_removed_ovd``, ``images_dropped_ovd``.
    """
    novel = {int(c) for c in novel_objects}
    mapping = {int(k): tuple(int(t) for t in v) for k, v in (novel_to_base or {}).items()}
    if rng is None:
        rng = np.random.default_rng([0, record.index, _RELABEL_STREAM])
    keep, labels = [], []
    relabelled = 0
    for i, label in enumerate(record.labels.tolist()):
        if label not in novel:
            keep.append(i)
            labels.append(label)
        elif mapping.get(label):
            targets = mapping[label]
            keep.append(i)
            labels.append(targets[int(rng.integers(len(targets)))] if len(targets) > 1 else targets[0])
            relabelled += 1
    out = _subset(record, np.asarray(keep, dtype=np.int64), np.asarray(labels, dtype=np.int64))
    _count(stats, "boxes_relabelled_ovd", relabelled)
    _count(stats, "boxes_removed_ovd", len(record.labels) - len(keep))
    _count(stats, "relations_removed_ovd", len(record.relations) - len(out.relations))
    if len(out.labels) < 2 or len(out.relations) == 0:
        _count(stats, "images_dropped_ovd")
        return None
    return out


def cap_objects(
    record: VGRecord,
    max_objects: int = MAX_OBJECTS,
    rng: np.random.Generator | None = None,
    stats: dict[str, int] | None = None,
) -> VGRecord:
    """Keep a random subset of ``max_objects`` boxes (in the drawn order, as OvSGTR's
    ``np.random.choice(n, max_objects, replace=False)``) when there are more; relations touching a removed box
    go. Unchanged when ``len(boxes) <= max_objects``. Default rng ``default_rng([0, record.index, 2])``.
    ``stats`` counts ``boxes_removed_cap``, ``relations_removed_cap``."""
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    n = len(record.labels)
    if n <= max_objects:
        return record
    if rng is None:
        rng = np.random.default_rng([0, record.index, _CAP_STREAM])
    out = _subset(record, rng.choice(n, max_objects, replace=False))
    _count(stats, "boxes_removed_cap", n - max_objects)
    _count(stats, "relations_removed_cap", len(record.relations) - len(out.relations))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain IoU ``[N, M]`` of xyxy boxes ``a`` ``[N, 4]``, ``b`` ``[M, 4]`` (widths ``x2 - x1``, no +1; a pair
    with zero union gets 0). float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def merge_same_class_boxes(
    record: VGRecord,
    iou_threshold: float = MERGE_IOU,
    drop_self_loops: bool = False,
    stats: dict[str, int] | None = None,
) -> VGRecord:
    """OvSGTR's merge of same-class boxes with IoU > ``iou_threshold`` (plain IoU, strict).

    Greedy, in box order, with OvSGTR's exact bookkeeping: ``M[i, j]`` = same class and IoU > thr (so
    ``M[i, i]`` holds for every box of positive area); for ``i = 0, 1, ...``, the still-unassigned ``j`` with
    ``M[i, j]`` get the next new id and box ``i`` is kept as its representative (if there is any such ``j``);
    those columns are then taken. A box absorbed earlier can therefore still become the representative of
    later boxes it overlaps (e.g. A~B, B~C, not A~C: A keeps {A, B}, then B is kept again for {C}). Relations
    are re-indexed to the new ids and never de-duplicated; a relation whose ends merged becomes a self-loop
    ``(k, k, p)``, kept unless ``drop_self_loops``. ``stats`` counts ``boxes_merged``, ``self_loops_dropped``.
    """
    n = len(record.labels)
    if n == 0:
        return record
    labels = record.labels.reshape(-1)
    match = (box_iou(record.boxes, record.boxes) > iou_threshold) & (labels[:, None] == labels[None, :])
    new_id = np.full(n, -1, dtype=np.int64)
    keep: list[int] = []
    for i in range(n):
        cols = np.nonzero(match[i])[0]
        if cols.size:
            new_id[cols] = len(keep)
            keep.append(i)
            match[:, cols] = False
    if (new_id < 0).any():  # a zero-area box matches nothing (not even itself): keep it on its own
        for i in np.nonzero(new_id < 0)[0]:
            new_id[i] = len(keep)
            keep.append(int(i))
    rel = record.relations.reshape(-1, 3)
    relations = np.column_stack([new_id[rel[:, 0]], new_id[rel[:, 1]], rel[:, 2]]).astype(np.int64).reshape(-1, 3)
    if drop_self_loops:
        loop = relations[:, 0] == relations[:, 1]
        _count(stats, "self_loops_dropped", int(loop.sum()))
        relations = relations[~loop]
    keep_arr = np.asarray(keep, dtype=np.int64)
    _count(stats, "boxes_merged", n - len(keep))
    return dataclasses.replace(
        record, boxes=record.boxes[keep_arr].reshape(-1, 4), labels=labels[keep_arr].copy(), relations=relations
    )


def filter_duplicate_relations(record: VGRecord, seed: int = 0, stats: dict[str, int] | None = None) -> VGRecord:
    """``filter_duplicate_rels``: one predicate per (subject, object) pair, drawn with
    ``default_rng([seed, record.index])`` exactly as :class:`~pipeline.datasets.vg.VGReader` does.
    ``stats`` counts ``relations_removed_duplicate``."""
    n = len(record.relations)
    relations = _one_predicate_per_pair(record.relations.reshape(-1, 3), np.random.default_rng([seed, record.index]))
    _count(stats, "relations_removed_duplicate", n - len(relations))
    return dataclasses.replace(record, relations=relations)


def open_vocab_training_record(
    record: VGRecord,
    mode: OpenVocabMode,
    split: OpenVocabSplit | None = None,
    seed: int = 0,
    relabel_novel_objects: bool = True,
    max_objects: int | None = MAX_OBJECTS,
    merge_iou: float | None = MERGE_IOU,
    filter_duplicate_rels: bool = True,
    drop_self_loops: bool = False,
    stats: dict[str, int] | None = None,
) -> VGRecord | None:
    """One training record through OvSGTR's steps 1-7 (module doc) for ``mode``; None if it is dropped.

    Args:
        record: a training record read with ``filter_duplicate_rels=False`` (``filter_non_overlap`` as wanted).
        mode: ``closed`` (no vocabulary filter), ``ovr`` (OvR), ``ovd`` (OvD), ``ovdr`` (OvD then OvR).
        split: the base/novel split (default: :func:`load_open_vocab_split`; unused for ``closed``).
        seed: seeds every random draw (module doc).
        relabel_novel_objects: OvD relabels through ``split.novel_to_base`` (OvSGTR); False removes every
            novel box.
        max_objects: the cap (None: no cap). merge_iou: the merge threshold (None: no merge).
        filter_duplicate_rels: one predicate per pair, after the vocabulary filters.
        drop_self_loops: see :func:`merge_same_class_boxes`.
        stats: accumulates the counts of every step and ``images_dropped_empty``.
    """
    if mode not in OPEN_VOCAB_MODES:
        raise ValueError(f"mode must be one of {OPEN_VOCAB_MODES}, got {mode!r}")
    if mode != "closed" and split is None:
        split = load_open_vocab_split()
    out: VGRecord | None = record
    if mode in ("ovd", "ovdr"):
        mapping = split.novel_to_base if relabel_novel_objects else None
        rng = np.random.default_rng([seed, record.index, _RELABEL_STREAM])
        out = filter_base_objects(out, split.novel_objects, mapping, rng, stats)
    if out is not None and mode in ("ovr", "ovdr"):
        out = filter_base_relations(out, split.novel_predicates, stats)
    if out is None:
        return None
    if max_objects is not None:
        out = cap_objects(out, max_objects, np.random.default_rng([seed, record.index, _CAP_STREAM]), stats)
    if merge_iou is not None:
        out = merge_same_class_boxes(out, merge_iou, drop_self_loops, stats)
    if filter_duplicate_rels:
        out = filter_duplicate_relations(out, seed, stats)
    if len(out.relations) == 0:
        _count(stats, "images_dropped_empty")
        return None
    return out
