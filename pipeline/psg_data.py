"""Vocabularies and training targets of the PSG model, from the prepared index.

Two annotation kinds (``IndexRecord.annotation``): ``panoptic`` (PSG: segment masks) and ``boxes`` (VG: boxes
only). :func:`model_task` maps them to the model's task (``masks`` / ``boxes``), :func:`training_target` and
:func:`ground_truth` give masks or boxes accordingly.

Open-vocabulary protocol (docs/DESIGN.md §4.3.7): under ``ovr`` relations with a novel predicate are removed from the
training targets, under ``ovdr`` also every instance of a novel object class (its segment is dropped from the
targets, with its relations). Training classifies against the *base* vocabulary only; at test time the text
embeddings of *all* classes are used, so novel categories can be predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.datasets.classes import ClassLists
from pipeline.datasets.index import IndexRecord
from pipeline.datasets.splits import Split, training_relations
from spade_core.psg.box_head import normalize_boxes

TASKS = {"panoptic": "masks", "boxes": "boxes"}


def model_task(records: list[IndexRecord]) -> str:
    """The ``SpadePSG`` task of a prepared split: ``masks`` for panoptic records, ``boxes`` for box records."""
    kinds = {r.annotation for r in records}
    if len(kinds) != 1:
        raise ValueError(f"the index mixes annotation kinds {sorted(kinds)}: prepare it again")
    return TASKS[kinds.pop()]


@dataclass(frozen=True)
class Vocabulary:
    """Global class ids (into the dataset's lists) the classifier scores, with their readable names."""

    object_ids: tuple[int, ...]
    object_names: tuple[str, ...]
    predicate_ids: tuple[int, ...]
    predicate_names: tuple[str, ...]

    def local_object(self) -> dict[int, int]:
        return {g: i for i, g in enumerate(self.object_ids)}

    def local_predicate(self) -> dict[int, int]:
        return {g: i for i, g in enumerate(self.predicate_ids)}

    def to_json(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items()}


def vocabularies(classes: ClassLists, split: Split) -> tuple[Vocabulary, Vocabulary]:
    """(training vocabulary = base classes, test vocabulary = all classes) of a prepared dataset's label spaces."""
    objs, preds = list(classes.object_names), list(classes.predicate_names)
    full = Vocabulary(tuple(range(len(objs))), tuple(objs), tuple(range(len(preds))), tuple(preds))
    base_o = tuple(i for i in range(len(objs)) if i not in split.novel_objects)
    base_p = tuple(i for i in range(len(preds)) if i not in split.novel_predicates)
    base = Vocabulary(base_o, tuple(objs[i] for i in base_o), base_p, tuple(preds[i] for i in base_p))
    return base, full


def training_target(record: IndexRecord, split: Split, vocab: Vocabulary) -> dict[str, torch.Tensor]:
    """``dict(labels [S'] (local ids), relations [R,3] (local ids))`` for training, plus ``masks [S',H,W]`` bool
    (panoptic records) or ``boxes [S',4]`` normalised ``(cx, cy, w, h)`` (box records, ``SpadePSG``'s box
    target format)."""
    kept = training_relations(record, split)
    keep = [i for i, novel in enumerate(kept.novel_segments) if not novel]
    remap = {old: new for new, old in enumerate(keep)}
    lo, lp = vocab.local_object(), vocab.local_predicate()
    labels = [lo[record.category_ids[i]] for i in keep]
    rels = [(remap[s], remap[o], lp[p]) for s, o, p in kept.relations]
    target = {
        "labels": torch.tensor(labels, dtype=torch.long),
        "relations": torch.tensor(rels, dtype=torch.long).reshape(-1, 3),
    }
    if record.annotation == "boxes":
        boxes = torch.tensor([record.bboxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        target["boxes"] = normalize_boxes(boxes, (record.height, record.width))
    else:
        masks = record.load_panoptic()
        target["masks"] = torch.from_numpy(masks[keep] if keep else np.zeros((0, *masks.shape[1:]), dtype=bool))
    return target


def ground_truth(record: IndexRecord) -> dict[str, np.ndarray]:
    """The evaluator's GT dict (global ids, full resolution): ``labels``, ``relations`` and ``masks`` bool
    ``[S,H,W]`` (panoptic) or ``boxes`` float ``[S,4]`` xyxy pixels (boxes)."""
    gt = {
        "labels": np.asarray(record.category_ids, dtype=np.int64),
        "relations": np.asarray(record.relations, dtype=np.int64).reshape(-1, 3),
    }
    if record.annotation == "boxes":
        gt["boxes"] = np.asarray(record.bboxes, dtype=np.float64).reshape(-1, 4)
    else:
        gt["masks"] = record.load_panoptic()
    return gt


def is_box_ground_truth(gt: dict) -> bool:
    """Whether a GT dict (:func:`ground_truth`) is Visual Genome's kind: ``boxes`` and no ``masks``."""
    return "boxes" in gt and "masks" not in gt
