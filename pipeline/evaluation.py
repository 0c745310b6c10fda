"""Everything of the ``evaluate`` stage that does not run the model: the evaluation settings, the chance
baseline and the metric artifacts.

Settings (each one call of :func:`spade_core.eval.evaluate` on a restricted ground truth; no matching here):

* ``closed``: all GT triplets; mR over all predicates.
* ``ovr``: GT triplets with a novel predicate; mR over the novel predicates (only those can occur).
  Computed when the split has novel predicates.
* ``ovdr``: GT triplets with a novel predicate or a novel subject/object class; mR over all predicates (a base
  predicate between novel objects counts). Computed when the split has novel objects.
* ``spatial_dr`` / ``spatial_ndr`` (paper Table 4): GT triplets with a spatial predicate
  (``pipeline/data/spatial_predicates.json``) whose subject and object box centres are more than 1/3 of the
  image width apart (DR) or not (NDR); mR over the spatial predicates. Computed when spatial predicates are
  given.

Images left without a GT triplet by a restriction drop out of that setting (``num_images`` says how many
count). Values are fractions; R@K is NaN for a setting with no evaluated image (written as ``null`` in JSON).

Box ground truth (VG: GT dicts with ``boxes``, no ``masks``) is evaluated with the Scene-Graph-Benchmark rules
(:mod:`spade_core.eval.vg`: +1-pixel box IoU, an empty prediction counts as recall 0, so
``skip_empty_predictions`` does not apply) and OvSGTR's open-vocabulary recalls: ``closed`` is OvSGTR's
"joint" recall, ``ovr`` the novel-relation recall (GT triplets with a novel predicate; R only), ``ovd`` the
novel-object recall (subject **and** object of a novel class; R only) when the split has novel objects; the
spatial DR/NDR split uses the GT box centres.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.datasets.classes import DATA_SOURCES, read_data_file, vocabulary_source
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.psg_data import is_box_ground_truth
from pipeline.tables import METRICS_SCHEMA, write_table
from pipeline.visualise import plot_per_predicate_recall
from spade_core.eval import boxes_from_masks, evaluate, novel_triplet_mask, restrict_gt, spatial_split, vg

SETTINGS = ("closed", "ovr", "ovdr", "ovd", "spatial_dr", "spatial_ndr")
PROTOCOLS = ("psg", "vg")
METRICS_PARQUET = "metrics.parquet"
PER_PREDICATE_PNG = "per_predicate_recall.png"


def load_spatial_predicates(source: str, predicate_names: Sequence[str]) -> list[int]:
    """Ids (into ``predicate_names``) of the spatial predicates of dataset ``source``, sorted.

    Raises ValueError for an unknown source or a listed name that is not in ``predicate_names``.
    """
    table = read_data_file("spatial_predicates.json")
    source = vocabulary_source(source) if source in DATA_SOURCES else source
    if source not in table or source.startswith("_"):
        known = sorted(k for k in table if not k.startswith("_"))
        raise ValueError(f"source must be one of {known}, got {source!r}")
    names = list(predicate_names)
    missing = [n for n in table[source]["predicates"] if n not in names]
    if missing:
        raise ValueError(f"spatial_predicates.json ({source}): {missing} not in predicate_names {names}")
    return sorted(names.index(n) for n in table[source]["predicates"])


def _relations(gt: dict) -> np.ndarray:
    rel = gt["relations"]
    rel = rel.detach().cpu().numpy() if hasattr(rel, "detach") else np.asarray(rel)
    return rel.reshape(-1, 3).astype(np.int64)


def _setting_summary(result: dict[str, Any], ks: Sequence[int]) -> dict[str, Any]:
    """R@K, mR@K (when the setting has it), num_images, num_skipped (PSG: images skipped for an empty
    prediction; VG: images whose empty prediction counted as recall 0)."""
    out: dict[str, Any] = {}
    for k in ks:
        out[f"R@{k}"] = result[f"R@{k}"]
        if f"mR@{k}" in result:
            out[f"mR@{k}"] = result[f"mR@{k}"]
    out["num_images"] = int(result["num_images"])
    out["num_skipped"] = int(result.get("num_skipped", result.get("num_empty_predictions", 0)))
    return out


def is_box_dataset(gt_images: Sequence[dict]) -> bool:
    """True for VG-style GT (:func:`pipeline.psg_data.is_box_ground_truth` of every image); raises ValueError for
    a mixture."""
    kinds = {is_box_ground_truth(gt) for gt in gt_images}
    if len(kinds) > 1:
        raise ValueError("gt_images mixes box and mask ground truth")
    return kinds == {True}


def _gt_boxes(gt: dict) -> np.ndarray:
    return np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4) if "boxes" in gt else boxes_from_masks(gt["masks"])


def _box_results(gt_images, pred_images, num_predicates, novel_predicates, novel_objects, ks, iou_thr):
    """VG settings but the spatial ones: joint (``closed``), novel relation (``ovr``), novel object (``ovd``)."""
    results = {"closed": vg.evaluate(gt_images, pred_images, num_predicates, ks, iou_thr)}
    if len(novel_predicates):
        results["ovr"] = vg.novel_recall(gt_images, pred_images, "relation", novel_predicates, ks, iou_thr,
                                         num_predicates)
    if len(novel_objects):
        results["ovd"] = vg.novel_recall(gt_images, pred_images, "object", novel_objects, ks, iou_thr,
                                         num_predicates)
    return results


def metric_rows(summary: dict[str, Any], setting_prefix: str = "") -> list[dict[str, Any]]:
    """Rows of ``metrics.parquet`` (:data:`~pipeline.tables.METRICS_SCHEMA`) from a summary's settings."""
    rows = []
    for setting, values in summary.items():
        if setting not in SETTINGS:
            continue
        for metric in ("R", "mR"):
            for key, value in values.items():
                if key.startswith(f"{metric}@"):
                    rows.append(
                        {
                            "setting": setting_prefix + setting,
                            "metric": metric,
                            "k": int(key.split("@")[1]),
                            "value": float(value),
                            "num_images": int(values["num_images"]),
                        }
                    )
    return rows


def compute_metrics(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    *,
    num_predicates: int,
    predicate_names: Sequence[str],
    novel_predicates: Sequence[int] = (),
    novel_objects: Sequence[int] = (),
    spatial_predicates: Sequence[int] = (),
    image_widths: Sequence[float] | None = None,
    ks: Sequence[int] = (20, 50, 100),
    iou_thr: float = 0.5,
    skip_empty_predictions: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All evaluation settings of one test set.

    Args:
        gt_images, pred_images: as in :func:`spade_core.eval.evaluate` (GT ``masks`` bool ``[S, H, W]``,
            ``labels`` ``[S]``, ``relations`` ``[R, 3]``; prediction ``None`` or ``masks`` ``[P, H, W]``,
            ``labels`` ``[P]``, ranked ``triplets`` ``[T, 4]``), or with ``boxes`` ``[N, 4]`` xyxy pixels in
            place of ``masks`` on both sides (:func:`spade_core.eval.vg.evaluate`; module doc).
        num_predicates: C; ``predicate_names`` must have C names.
        novel_predicates, novel_objects: ids of the split's novel predicates / object classes.
        spatial_predicates: predicate ids for the DR/NDR analysis (:func:`load_spatial_predicates`).
        image_widths: per image width for the DR distance; default the GT mask width (required for boxes).
        ks, iou_thr, skip_empty_predictions: as in :func:`spade_core.eval.evaluate`.

    Returns:
        ``(rows, summary)``: ``rows`` for ``metrics.parquet``; ``summary`` ``{setting: {"R@K", "mR@K",
        "num_images", "num_skipped"}}`` for the settings computed, plus ``"per_predicate"``: closed-set rows
        ``{"predicate", "name", "recall@K"..., "num_images"}`` (one per predicate id).
    """
    if len(predicate_names) != num_predicates:
        raise ValueError(f"predicate_names has {len(predicate_names)} names, num_predicates={num_predicates}")
    if image_widths is not None and len(image_widths) != len(gt_images):
        raise ValueError(f"image_widths has {len(image_widths)} entries but gt_images has {len(gt_images)}")
    ks = [int(k) for k in ks]
    boxes = is_box_dataset(gt_images)
    relations = [_relations(gt) for gt in gt_images]
    if boxes:
        results = _box_results(gt_images, pred_images, num_predicates, novel_predicates, novel_objects, ks, iou_thr)

        def evaluate_subset(gts: list[dict], subset: list[int]) -> dict[str, Any]:
            return vg.evaluate(gts, pred_images, num_predicates, ks, iou_thr, predicate_subset=subset)
    else:
        common = {
            "num_predicates": num_predicates,
            "ks": ks,
            "iou_thr": iou_thr,
            "skip_empty_predictions": skip_empty_predictions,
        }
        results = {"closed": evaluate(gt_images, pred_images, **common)}

        def novel(objects: Sequence[int]) -> list[np.ndarray]:
            return [novel_triplet_mask(r, gt["labels"], novel_predicates, objects)
                    for r, gt in zip(relations, gt_images)]

        def evaluate_subset(gts: list[dict], subset: list[int]) -> dict[str, Any]:
            return evaluate(gts, pred_images, **common, predicate_subset=subset)

        if len(novel_predicates):
            results["ovr"] = evaluate_subset(restrict_gt(gt_images, novel(())), sorted(set(novel_predicates)))
        if len(novel_objects):
            results["ovdr"] = evaluate(restrict_gt(gt_images, novel(novel_objects)), pred_images, **common)
    if len(spatial_predicates):
        dr, ndr = [], []
        for i, (rel, gt) in enumerate(zip(relations, gt_images)):
            if image_widths is not None:
                width = image_widths[i]
            elif boxes:
                raise ValueError("image_widths is required with box ground truth (the DR distance)")
            else:
                width = gt["masks"].shape[-1]
            d, n = spatial_split(rel, _gt_boxes(gt), float(width), spatial_predicates)
            dr.append(d)
            ndr.append(n)
        subset = sorted(set(spatial_predicates))
        results["spatial_dr"] = evaluate_subset(restrict_gt(gt_images, dr), subset)
        results["spatial_ndr"] = evaluate_subset(restrict_gt(gt_images, ndr), subset)

    summary: dict[str, Any] = {name: _setting_summary(r, ks) for name, r in results.items()}
    closed = results["closed"]
    summary["per_predicate"] = [
        {
            "predicate": c,
            "name": str(predicate_names[c]),
            **{f"recall@{k}": float(closed[f"per_predicate@{k}"][c]) for k in ks},
            "num_images": int(closed["predicate_counts"][c]),
        }
        for c in range(num_predicates)
    ]
    return metric_rows(summary), summary


def random_triplets(num_masks: int, num_rows: int, num_predicates: int, rng: np.random.Generator) -> np.ndarray:
    """Random distinct ``(s, o, p, score)`` rows ``[n, 4]``: ``s != o``, uniform predicates, sorted scores.

    ``n = min(num_rows, num_masks * (num_masks - 1) * num_predicates)`` (0 with fewer than two masks).
    """
    pairs = num_masks * (num_masks - 1)
    n = min(num_rows, pairs * num_predicates)
    if n <= 0:
        return np.zeros((0, 4), dtype=np.float64)
    flat = rng.choice(pairs * num_predicates, size=n, replace=False)
    pair, p = np.divmod(flat, num_predicates)
    s, o = np.divmod(pair, num_masks - 1)
    o = o + (o >= s)  # skip the diagonal: o in [0, P) \ {s}
    scores = np.sort(rng.random(n))[::-1]
    return np.stack([s, o, p, scores], axis=1).astype(np.float64)


def chance_baseline(
    gt_images: Sequence[dict],
    pred_images: Sequence[dict | None],
    *,
    rng_seed: int,
    max_triplets: int,
    num_predicates: int,
    predicate_names: Sequence[str],
    num_draws: int = 1,
    **settings: Any,
) -> dict[str, Any]:
    """The README's chance baseline, evaluated like :func:`compute_metrics` (same keyword ``settings``).

    Per image, the predicted masks and labels are kept and the triplets replaced by random distinct
    ``(subject != object, uniformly random predicate)`` rows, as many as the prediction has (at most
    ``max_triplets``); a missing or empty prediction stays so (same skip rule). ``num_draws`` independent draws
    (one generator seeded with ``rng_seed``) are evaluated and their R@K / mR@K averaged: a setting with few GT
    triplets (e.g. the ~200 novel-predicate ones of a small test split) gives a noisy single draw.

    Returns:
        The ``summary`` of :func:`compute_metrics` for the random triplets: R@K / mR@K of every setting the mean
        over the draws, everything else (image counts, per-predicate rows) from the first draw.
    """
    if max_triplets < 1:
        raise ValueError(f"max_triplets must be positive, got {max_triplets}")
    if num_draws < 1:
        raise ValueError(f"num_draws must be positive, got {num_draws}")
    rng = np.random.default_rng(rng_seed)
    summaries = []
    for _ in range(num_draws):
        chance: list[dict | None] = []
        for pred in pred_images:
            if pred is None or len(pred["triplets"]) == 0:
                chance.append(pred)
                continue
            rows = min(len(pred["triplets"]), max_triplets)
            chance.append({**pred, "triplets": random_triplets(len(pred["labels"]), rows, num_predicates, rng)})
        summaries.append(compute_metrics(
            gt_images, chance, num_predicates=num_predicates, predicate_names=predicate_names, **settings
        )[1])
    out = summaries[0]
    for setting in SETTINGS:
        for key in out.get(setting, {}):
            if key.startswith(("R@", "mR@")):
                out[setting][key] = float(np.mean([s[setting][key] for s in summaries]))
    return out


METRIC_DECIMALS = 6  # metrics.json: fractions to 1e-6 (a recall of 1e-4 % resolution), not 16 digits


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python, floats rounded to METRIC_DECIMALS."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return round(float(value), METRIC_DECIMALS) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def metrics_json(summary: dict[str, Any], chance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` content: the summary's settings (no per-predicate rows), plus ``chance``."""
    out = {k: v for k, v in summary.items() if k in SETTINGS}
    if chance is not None:
        out["chance"] = {k: v for k, v in chance.items() if k in SETTINGS}
    return _clean(out)


def per_predicate_csv(per_predicate: Sequence[dict[str, Any]], k: int) -> str:
    """DVC plots data: ``predicate,recall,k,num_images,predicate_id``, recall = ``R_c^K`` (fraction)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["predicate", "recall", "k", "num_images", "predicate_id"])
    for row in per_predicate:
        writer.writerow([row["name"], f"{row[f'recall@{k}']:.6f}", k, row["num_images"], row["predicate"]])
    return buf.getvalue()


def write_outputs(
    out_dir: Path,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    per_predicate: Sequence[dict[str, Any]] | None,
    metrics_json_path: Path,
    plots_csv_path: Path,
    chance: dict[str, Any] | None = None,
    protocol: str = "psg",
) -> None:
    """Write the metric artifacts, each atomically (temporary file + rename).

    * ``out_dir/metrics.parquet``: ``rows`` (+ the chance rows, setting ``chance_<setting>``), METRICS_SCHEMA,
      with the file metadata ``protocol`` (``psg`` | ``vg``: which evaluator made the numbers).
    * ``metrics_json_path``: :func:`metrics_json` (for ``dvc metrics show``).
    * ``plots_csv_path``: :func:`per_predicate_csv` at the largest K (for ``dvc plots show``).
    * ``out_dir/per_predicate_recall.png``: bar chart of the same numbers.

    ``per_predicate`` defaults to ``summary["per_predicate"]``.
    """
    out_dir, metrics_json_path, plots_csv_path = Path(out_dir), Path(metrics_json_path), Path(plots_csv_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_predicate = summary.get("per_predicate", []) if per_predicate is None else per_predicate
    all_rows = list(rows) + (metric_rows(chance, "chance_") if chance is not None else [])
    columns = {f.name: [r[f.name] for r in all_rows] for f in METRICS_SCHEMA}
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    write_table(columns, METRICS_SCHEMA.with_metadata({"protocol": protocol}), out_dir / METRICS_PARQUET)
    atomic_write_json(metrics_json_path, metrics_json(summary, chance), indent=2)
    if not rows:
        raise ValueError("rows is empty: nothing to write")
    k = max(int(r["k"]) for r in rows)
    atomic_write_text(plots_csv_path, per_predicate_csv(per_predicate, k))
    plot_per_predicate_recall(per_predicate, k, out_dir / PER_PREDICATE_PNG)
