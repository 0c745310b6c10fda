"""The ``prepare`` stage's work: validate a PSG-format or VG-format dataset and write the prepared folder.

``data.source: synthetic`` generates the embedded PSG-format dataset from ``prepare.seed`` into
``<out_dir>/dataset``; ``psg`` reads ``data.psg_json`` with files under ``data.image_root``; ``vg`` (Visual Genome
VG-150) and ``synthetic-vg`` (the embedded scenes written as a VG-format triple) are read by
:mod:`pipeline.datasets.prepare_vg` into box records (``annotation: boxes``). For PSG, every record is
validated (:func:`pipeline.datasets.psg.validate_record`); ``data.on_error: fail`` stops at the first bad
record, ``skip`` drops it and lists it in the report. Every per-record problem (a bad field, a missing,
unreadable, oversized or non-regular image or PNG file, ...) is a :class:`~pipeline.datasets.psg.DatasetError`;
a record without a usable ``image_id`` is named by its position ``data[i]`` and the psg.json path.
:func:`prepare_dataset` writes, under ``out_dir``:

- ``index/train.parquet``, ``index/test.parquet``: one row per image (:mod:`pipeline.datasets.index`), file
  metadata ``source``, ``split`` and ``annotation`` (``panoptic`` for psg / synthetic, ``boxes`` for vg /
  synthetic-vg);
- ``classes.json``: the label spaces with readable names (:func:`~pipeline.datasets.classes.read_classes`);
- ``split.json``: the open-vocabulary split in use (:func:`~pipeline.datasets.splits.read_split_file`);
- ``report.json``: ``source``, ``split``, ``on_error``, ``annotation``, ``num_records``, counts per split
  (``images``, ``segments`` = objects: segments or boxes, ``relations``, ``images_without_relations``,
  ``usable_for_calibration``, ``relations_per_predicate``), duplicates removed, crowd segments kept
  (``crowd_segments``), skipped records with image id (or position in ``data``; VG: h5 ``index`` and
  ``split``), reason and file; VG sources also ``vg``: ``num_val``, ``val_images``, ``open_vocab_mode``,
  ``novel_to_base_relabelling`` and the reader / filter counts of ``train`` and ``test`` (images selected,
  read, skipped; relations removed by the non-overlap, open-vocabulary, cap and duplicate filters; images
  dropped by them);
- ``dataset/`` (synthetic: psg.json, images and panoptic PNGs; synthetic-vg: ``VG-SGG.h5``,
  ``VG-SGG-dicts.json``, ``image_data.json``, ``VG_100K/``).

Everything is written into a temporary folder beside ``out_dir`` that replaces ``out_dir`` only when the whole
stage succeeded (:func:`pipeline.io.atomic_dir`), so a failure never leaves partial output.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.datasets.classes import ClassLists, load_class_lists
from pipeline.datasets.index import IndexRecord, write_index
from pipeline.datasets.prepare_vg import VG_SOURCES, prepare_vg
from pipeline.datasets.psg import DatasetError, PSGFile, load_psg_json, validate_record
from pipeline.datasets.splits import Split, load_split, usable_for_calibration
from pipeline.datasets.synthetic import generate_dataset, generation_args
from pipeline.io import atomic_dir
from spade_core.names import readable_name


def dataset_classes(psg: PSGFile, source: str, split: str) -> ClassLists:
    """The label spaces of ``psg``; readable names from the shipped lists when they are the same lists.

    A split other than ``closed`` is defined on the shipped lists, so then they must match.
    """
    shipped = load_class_lists(source)
    found = ClassLists(
        tuple(psg.thing_classes),
        tuple(psg.stuff_classes),
        tuple(psg.predicate_classes),
        tuple(readable_name(n) for n in psg.stuff_classes),
    )
    same = (found.thing_classes, found.stuff_classes, found.predicate_classes) == (
        shipped.thing_classes,
        shipped.stuff_classes,
        shipped.predicate_classes,
    )
    if same:
        return shipped
    if split != "closed":
        raise DatasetError(
            f"class lists differ from the {source} lists shipped in pipeline/data/{source}_classes.json, "
            f"on which data.split={split} is defined",
            path=psg.path,
        )
    return found


def validate_all(
    psg: PSGFile, image_root: Path, classes: ClassLists, split: Split, on_error: str, progress: bool = True
) -> tuple[dict[str, list[IndexRecord]], dict[str, Any]]:
    """Validate every record; returns ``{"train": [...], "test": [...]}`` and the report fields (the per-split
    counts are added by :func:`write_prepared`)."""
    out: dict[str, list[IndexRecord]] = {"train": [], "test": []}
    skipped: list[dict[str, Any]] = []
    duplicates: dict[str, int] = {}
    seen: set[str] = set()
    sizes = (classes.num_things, len(classes.object_classes), len(classes.predicate_classes))
    crowd = 0
    for position, record in enumerate(tqdm(psg.records, desc="validate", disable=not progress)):
        try:
            rec, dups = validate_record(record, image_root, *sizes, position=position)
            if rec.image_id in seen:
                raise DatasetError("image_id occurs twice in psg.json", rec.image_id)
        except DatasetError as err:
            if err.image_id is None and err.path is None:  # a record named by its position: name the file too
                err = DatasetError(err.reason, path=psg.path, position=position)
            if on_error == "fail":
                err.hint = "fix the record, or set data.on_error: skip to drop bad records (listed in report.json)"
                raise err from None
            skipped.append({"image_id": err.image_id, "position": position, "reason": err.reason, "file": err.path})
            continue
        crowd += sum(1 for seg in record["segments_info"] if seg.get("iscrowd"))
        seen.add(rec.image_id)
        if dups:
            duplicates[rec.image_id] = dups
        rec = replace(rec, usable_for_calibration=usable_for_calibration(rec, split))
        out["test" if rec.image_id in psg.test_image_ids else "train"].append(rec)
    if not out["train"] and not out["test"]:
        raise DatasetError("no valid record left", path=psg.path)
    report: dict[str, Any] = {"num_records": len(psg.records)}
    report["test_image_ids_without_record"] = len(psg.test_image_ids - seen)
    report["duplicates_removed"] = sum(duplicates.values())
    report["duplicates_by_image"] = duplicates
    report["crowd_segments"] = crowd
    report["num_skipped"] = len(skipped)
    report["skipped"] = skipped
    return out, report


def split_counts(records: list[IndexRecord], classes: ClassLists) -> dict[str, Any]:
    """The per-split counts of ``report.json`` (``segments`` counts objects: segments or boxes)."""
    predicates = Counter(r[2] for rec in records for r in rec.relations)
    return {
        "images": len(records),
        "segments": sum(len(r.category_ids) for r in records),
        "relations": sum(len(r.relations) for r in records),
        "images_without_relations": sum(not r.relations for r in records),
        "usable_for_calibration": sum(r.usable_for_calibration for r in records),
        "relations_per_predicate": {p: predicates[i] for i, p in enumerate(classes.predicate_classes)},
    }


def stored_image_root(image_root: str, out_dir: Path) -> str:
    """A user image root as the index stores it: absolute as given, relative made relative to the index folder."""
    if os.path.isabs(image_root):
        return image_root
    return os.path.relpath(os.path.abspath(image_root), os.path.abspath(out_dir / "index"))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def write_prepared(params: Any, work: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write every output of ``prepare`` into ``work`` (which will become ``out_dir``); returns the report."""
    data, prep = params.data, params.prepare
    if data.source in VG_SOURCES:
        records, classes, split, stored_root, counts = prepare_vg(
            params, work, lambda root: stored_image_root(root, out_dir), progress
        )
        annotation = "boxes"
    elif data.source == "synthetic":
        syn = prep.synthetic
        if syn.image_format != "png":
            raise ValueError(
                f"prepare.synthetic.image_format={syn.image_format} needs data.source=synthetic-vg "
                "(the synthetic PSG-format dataset is written as PNG)"
            )
        psg_json = generate_dataset(work / "dataset", **generation_args(prep), progress=progress)
        image_root, stored_root = work / "dataset", "../dataset"
    elif data.source == "psg":
        if not data.psg_json or not data.image_root:
            raise ValueError("data.source=psg needs data.psg_json and data.image_root")
        psg_json, image_root = Path(data.psg_json), Path(data.image_root)
        if not image_root.is_dir():
            raise DatasetError("data.image_root is not a folder", path=image_root)
        stored_root = stored_image_root(data.image_root, out_dir)
    else:
        raise ValueError(f"data.source must be one of synthetic, psg, vg, synthetic-vg; got {data.source!r}")
    if data.source in ("synthetic", "psg"):
        psg = load_psg_json(psg_json)
        classes = dataset_classes(psg, data.source, data.split)
        split = load_split(data.source, data.split)
        records, counts = validate_all(psg, image_root, classes, split, data.on_error, progress)
        annotation = "panoptic"

    meta = {"source": data.source, "split": data.split, "annotation": annotation}
    for name, recs in records.items():
        write_index(work / "index" / f"{name}.parquet", recs, stored_root, meta)
    _write_json(work / "classes.json", {"source": data.source, **classes.to_json()})
    _write_json(work / "split.json", {"source": data.source, **split.to_json(classes)})
    per_split = {name: split_counts(recs, classes) for name, recs in records.items()}
    report = {"source": data.source, "split": data.split, "on_error": data.on_error, "annotation": annotation,
              "num_records": counts["num_records"], **per_split, **counts}  # fmt: skip
    _write_json(work / "report.json", report)
    return report


def prepare_dataset(params: Any, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Build the prepared folder ``out_dir`` from ``params`` (``.data`` and ``.prepare`` sections), replacing
    it only when everything succeeded; returns the report."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as work:
        report = write_prepared(params, work, out_dir, progress)
    return report
