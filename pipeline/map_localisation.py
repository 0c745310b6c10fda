"""Do the teacher maps stored by ``invert`` point at the objects their tokens name?

For the first ``max_images`` images of an inversion store, each kept triplet gives queries scored with
:mod:`spade_core.diffusion.localisation` against the image's ground-truth object regions
(:meth:`~pipeline.datasets.index.IndexRecord.load_regions`: the panoptic segment masks for PSG, the rasterised
boxes for Visual Genome, so calibration's localisation is scored against boxes there): the subject phrase's
and the object phrase's tokens against every segment of the category they name (kind ``entity``: the pointing
game's rule, see :func:`pipeline.teacher.localisation_queries`) and against the triplet's one segment (kind
``entity-instance``), and the predicate's tokens against the union of both segments (kind ``predicate``).
``chance`` is the pointing accuracy of a map whose maximum falls on a uniformly random pixel (the mean
target-area fraction), the baseline to beat.
Maps were computed on the image resized to a square, so they are resized back to the mask's ``H x W``.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.datasets.index import IndexRecord
from pipeline.stores import InversionStore
from spade_core.diffusion.localisation import (
    LocalisationQuery,
    category_masks,
    merge_scores,
    score_queries,
    summarise,
)
from spade_core.diffusion.prompts import ROLE_OBJECT, ROLE_PREDICATE, ROLE_SUBJECT


def stored_queries(record: IndexRecord, roles: np.ndarray, triplet_index: np.ndarray) -> list[LocalisationQuery]:
    """Queries of one stored prompt (``roles``/``triplet_index`` [T] as stored) against ``record``'s regions
    (segment masks, or rasterised boxes for a box record)."""
    kept = sorted({int(k) for k in triplet_index if k >= 0})
    if not kept:
        return []
    masks = torch.from_numpy(record.load_regions())
    targets = category_masks(masks, record.category_ids)
    queries = []
    for k in kept:
        if k >= len(record.relations):
            raise ValueError(f"image {record.image_id!r}: stored triplet {k} but the record has "
                             f"{len(record.relations)} relations (store and dataset disagree)")
        s, o, _ = record.relations[k]
        for role, seg in ((ROLE_SUBJECT, s), (ROLE_OBJECT, o)):
            tokens = np.flatnonzero((triplet_index == k) & (roles == role)).tolist()
            if tokens and masks[seg].any():
                queries += [LocalisationQuery("entity", tokens, targets[seg]),
                            LocalisationQuery("entity-instance", tokens, masks[seg])]
        tokens = np.flatnonzero((triplet_index == k) & (roles == ROLE_PREDICATE)).tolist()
        if tokens and (masks[s] | masks[o]).any():
            queries.append(LocalisationQuery("predicate", tokens, masks[s] | masks[o]))
    return queries


def stored_map_localisation(
    store: InversionStore, records: list[IndexRecord], max_images: int = 64
) -> dict[str, dict[str, float]]:
    """``{kind: {"pointing", "iou", "chance", "n"}}`` over the first ``max_images`` images of ``store``
    (``records``: the index records, any order; matched by image id)."""
    by_id = {r.image_id: r for r in records}
    n = min(max_images, store.geometry.num_images)
    data = store.read(0, n, ("attn", "roles", "triplet_index"))
    scores: dict[str, dict[str, list[float]]] = {}
    chance: dict[str, list[float]] = {}
    for i, image_id in enumerate(store.image_ids[:n]):
        if image_id not in by_id:
            raise KeyError(f"store image {image_id!r} is not in the dataset index")
        queries = stored_queries(by_id[image_id], data["roles"][i], data["triplet_index"][i])
        if not queries:
            continue
        maps = torch.from_numpy(data["attn"][i].astype(np.float32))
        merge_scores(scores, score_queries(maps, queries))
        for q in queries:
            chance.setdefault(q.kind, []).append(float(q.mask.float().mean()))
    summary = summarise(scores)
    for kind, d in summary.items():
        d["chance"] = float(np.mean(chance[kind]))
    return summary
