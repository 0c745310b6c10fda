"""Open-vocabulary splits (``data.split``: ``closed`` | ``ovr`` | ``ovdr``).

- ``closed``: every category and predicate is base.
- ``ovr`` (open-vocabulary relation): the novel predicates of ``pipeline/data/<source>_split.json``; relations
  with a novel predicate are removed from training.
- ``ovdr`` (open-vocabulary detection + relation): also the novel object classes; relations touching a
  segment of a novel class are removed from training too, and those segments are marked.

PSG: the PGSG predicate split and a documented 7:3 object split; VG-150 (``source`` ``vg``): the OvSGTR split
(its ``novel_to_base`` relabelling is used by ``prepare``, :mod:`pipeline.datasets.vg_open_vocab`); synthetic:
its own lists (see the ``_about`` and ``*_rule`` fields of the JSON files). Test time always uses the text
embeddings of *all* classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pipeline import paths
from pipeline.datasets.classes import ClassLists, load_class_lists, read_data_file

SPLITS = ("closed", "ovr", "ovdr")


@dataclass(frozen=True)
class Split:
    """The novel predicate ids and novel object category ids of one setting (empty for ``closed``)."""

    name: str
    novel_predicates: frozenset[int]
    novel_objects: frozenset[int]

    def to_json(self, classes: ClassLists) -> dict[str, Any]:
        """The ``split.json`` written by ``prepare``: ids and names."""
        return {
            "split": self.name,
            "novel_predicate_ids": sorted(self.novel_predicates),
            "novel_predicates": [classes.predicate_classes[i] for i in sorted(self.novel_predicates)],
            "novel_object_ids": sorted(self.novel_objects),
            "novel_objects": [classes.object_classes[i] for i in sorted(self.novel_objects)],
        }


def _ids(names: Sequence[str], vocabulary: Sequence[str], what: str, source: str) -> frozenset[int]:
    unknown = [n for n in names if n not in vocabulary]
    if unknown:
        raise ValueError(f"{source}_split.json: unknown {what} {unknown}")
    return frozenset(vocabulary.index(n) for n in names)


def load_split(source: str, split: str) -> Split:
    """The split ``split`` of dataset ``source``, as ids into the shipped class lists of ``source``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    classes = load_class_lists(source)
    if split == "closed":
        return Split(split, frozenset(), frozenset())
    raw = read_data_file(f"{source}_split.json")
    predicates = _ids(raw["novel_predicates"], classes.predicate_classes, "predicates", source)
    objects = frozenset()
    if split == "ovdr":
        objects = _ids(raw["novel_objects"], classes.object_classes, "objects", source)
    return Split(split, predicates, objects)


def read_split_file(path: str | Path = paths.SPLIT_JSON) -> Split:
    """Read the ``split.json`` that ``prepare`` wrote (the split of the prepared dataset)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return Split(raw["split"], frozenset(raw["novel_predicate_ids"]), frozenset(raw["novel_object_ids"]))


def _categories_and_relations(record: Any) -> tuple[list[int], list[Sequence[int]]]:
    """Category ids per segment and ``[s, o, p]`` relations of a psg.json record dict or an IndexRecord."""
    if isinstance(record, Mapping):
        return [int(s["category_id"]) for s in record["segments_info"]], list(record["relations"])
    return [int(c) for c in record.category_ids], list(record.relations)


def usable_for_calibration(record: Any, split: Split) -> bool:
    """True when every segment's category and every relation's predicate of ``record`` is base."""
    categories, relations = _categories_and_relations(record)
    if any(c in split.novel_objects for c in categories):
        return False
    return not any(int(r[2]) in split.novel_predicates for r in relations)


class TrainingRelations(NamedTuple):
    """Relations kept for training ``[(s, o, p), ...]`` and a per-segment novel-object flag."""

    relations: list[tuple[int, int, int]]
    novel_segments: list[bool]


def training_relations(record: Any, split: Split) -> TrainingRelations:
    """Filter a record's relations for training under ``split``.

    ``ovr`` drops relations with a novel predicate; ``ovdr`` also drops relations whose subject or object
    segment has a novel category, and flags those segments in ``novel_segments`` (their masks should not be
    supervised as known classes either).
    """
    categories, relations = _categories_and_relations(record)
    novel_segments = [c in split.novel_objects for c in categories]
    kept = [
        (int(s), int(o), int(p))
        for s, o, p in relations
        if int(p) not in split.novel_predicates and not novel_segments[int(s)] and not novel_segments[int(o)]
    ]
    return TrainingRelations(kept, novel_segments)
