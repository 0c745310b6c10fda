"""Vocabularies and training targets of the PSG model, from the prepared index.

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
    """``dict(labels [S'] (local ids), masks [S',H,W] bool, relations [R,3] (local ids))`` for training."""
    kept = training_relations(record, split)
    masks = record.load_panoptic()
    keep = [i for i, novel in enumerate(kept.novel_segments) if not novel]
    remap = {old: new for new, old in enumerate(keep)}
    lo, lp = vocab.local_object(), vocab.local_predicate()
    labels = [lo[record.category_ids[i]] for i in keep]
    rels = [(remap[s], remap[o], lp[p]) for s, o, p in kept.relations]
    return {
        "labels": torch.tensor(labels, dtype=torch.long),
        "masks": torch.from_numpy(masks[keep] if keep else np.zeros((0, *masks.shape[1:]), dtype=bool)),
        "relations": torch.tensor(rels, dtype=torch.long).reshape(-1, 3),
    }


def ground_truth(record: IndexRecord) -> dict[str, np.ndarray]:
    """The evaluator's GT dict (global ids, full resolution)."""
    return {
        "masks": record.load_panoptic(),
        "labels": np.asarray(record.category_ids, dtype=np.int64),
        "relations": np.asarray(record.relations, dtype=np.int64).reshape(-1, 3),
    }
