"""The ``prepare`` stage's Visual Genome path: ``data.source: vg | synthetic-vg`` -> box records of the index.

Input: ``vg`` reads the VG-150 triple ``data.vg_h5``, ``data.vg_dicts``, ``data.vg_image_data`` with the images
under ``data.image_root`` (``<image_id>.jpg``); ``synthetic-vg`` first writes the embedded synthetic scenes as a
VG-format triple (:func:`~pipeline.datasets.synthetic_vg.generate_vg_dataset`, from ``prepare.seed`` and
``prepare.synthetic.*``, images in ``prepare.synthetic.image_format``) into ``<out_dir>/dataset``. Both are then
read through the same :class:`~pipeline.datasets.vg.VGReader` (Scene-Graph-Benchmark loader semantics):

* train = ``iter_split("train", filter_duplicate_rels=False, seed=prepare.seed)`` with ``filter_non_overlap``
  = ``data.vg_filter_non_overlap`` (default on, Scene-Graph-Benchmark's SGDet training rule: a relation whose
  two boxes do not overlap is dropped; on the synthetic scenes that is most left of / right of / far from),
  then :func:`~pipeline.datasets.vg_open_vocab.open_vocab_training_record` with mode ``data.split``
  (``closed | ovr | ovdr``): OvSGTR's OvD / OvR filters, the 100-box cap, the same-class box merge and the
  duplicate filter (one predicate per pair). Records it drops are counted in the report.
* val = the first ``num_val`` kept split-0 images: 5,000 for ``vg`` (the standard VG-150 val part), 0 for
  ``synthetic-vg`` (the embedded data has no validation part; every split-0 image trains). Val images are not
  used by later stages; they are only counted (``vg.val_images``), never read or validated.
* test = ``iter_split("test")``: every relation kept (duplicates and several predicates on one pair included).

Vocabulary and split: ``vg`` uses the shipped VG-150 lists (``pipeline/data/vg_classes.json``; the dicts.json
vocabulary must equal them for ``data.split`` other than ``closed``, whose novel classes are named on them; a
different vocabulary with ``closed`` is used as the file gives it, all objects things) and the OvSGTR split
``vg_split.json`` (OvD relabels a novel box through its ``novel_to_base`` list; a novel class with an empty list
is removed). ``synthetic-vg`` uses the synthetic lists (``synthetic_classes.json``: 10 thing classes, then 6 stuff
classes, so ``isthing = label < 10``) and the synthetic split (``synthetic_split.json``, whose ``novel_to_base``
is the analogue of OvSGTR's: under ``ovdr`` a hexagon is relabelled a box, a heart a ball, floor and sand grass,
and the yellow star, with an empty list, is removed).

Each :class:`~pipeline.datasets.vg.VGRecord` becomes an :class:`~pipeline.datasets.index.IndexRecord` with
``file_name = "<image_id>.<ext>"`` (relative to the image root), ``pan_seg_file_name = ""``, ``segment_ids = []``,
``category_ids`` = the 0-based labels, ``isthing = label < num_things``, ``bboxes`` = the reader's boxes (xyxy
original pixels, exclusive ends), ``relations`` and ``usable_for_calibration`` (every object and predicate base
under the split in use).

Errors: a bad image (the reader's named reasons, or an ``image_id`` seen twice) is a
:class:`~pipeline.datasets.psg.DatasetError` naming the image id, the h5 index, the reason and the file;
``data.on_error: fail`` raises the first one (with the hint of the PSG path), ``skip`` lists it in the report
(``image_id``, ``index``, ``split``, ``reason``, ``file``) and goes on. File-level problems (a missing file, a
missing h5 key, arrays of inconsistent lengths, ``image_data.json`` not aligned with the h5) always fail, naming
the file.

Report fields (beside the per-split counts ``prepare`` adds): ``num_records`` (images in the h5),
``duplicates_removed`` / ``duplicates_by_image`` (training relations removed by the one-predicate-per-pair
filter), ``num_skipped`` / ``skipped`` (h5 order), ``test_image_ids_without_record`` and ``crowd_segments``
(PSG notions: 0), and ``vg``: ``num_val``, ``val_images`` (split-0 images with boxes and relations that form
the val part, counted, not read), ``open_vocab_mode``, ``novel_to_base_relabelling`` (whether OvD relabels),
``train`` (reader counts ``images_selected`` / ``images`` / ``images_skipped`` / ``size_from_file``, the
non-overlap filter's ``relations_removed_non_overlap`` / ``images_dropped_non_overlap``, every count of
:func:`~pipeline.datasets.vg_open_vocab.open_vocab_training_record`, ``images_dropped_open_vocab`` and
``relations_removed_open_vocab`` = OvR + OvD + cap) and ``test`` (the reader counts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.datasets.classes import ClassLists, load_class_lists, read_data_file, vocabulary_source
from pipeline.datasets.index import IndexRecord
from pipeline.datasets.psg import DatasetError
from pipeline.datasets.splits import Split, load_split, usable_for_calibration
from pipeline.datasets.synthetic import generation_args
from pipeline.datasets.synthetic_vg import VGFiles, generate_vg_dataset
from pipeline.datasets.vg import NUM_VAL, VGReader, VGRecord, VGVocab
from pipeline.datasets.vg_open_vocab import OpenVocabSplit, open_vocab_training_record
from pipeline.params import missing_vg_paths

VG_SOURCES = ("vg", "synthetic-vg")
NUM_VAL_BY_SOURCE = {"vg": NUM_VAL, "synthetic-vg": 0}
ON_ERROR_HINT = "fix the record, or set data.on_error: skip to drop bad records (listed in report.json)"

READER_TRAIN_KEYS = (
    "images_selected",
    "images",
    "images_skipped",
    "size_from_file",
    "relations_removed_non_overlap",
    "images_dropped_non_overlap",
)
OPEN_VOCAB_KEYS = (
    "relations_removed_ovr",
    "images_dropped_ovr",
    "boxes_relabelled_ovd",
    "boxes_removed_ovd",
    "relations_removed_ovd",
    "images_dropped_ovd",
    "boxes_removed_cap",
    "relations_removed_cap",
    "boxes_merged",
    "relations_removed_duplicate",
    "images_dropped_empty",
)
READER_TEST_KEYS = ("images_selected", "images", "images_skipped", "size_from_file")


def vocab_source(source: str) -> str:
    """:func:`~pipeline.datasets.classes.vocabulary_source` of a VG ``data.source`` (ValueError for another)."""
    if source not in VG_SOURCES:
        raise ValueError(f"data.source must be one of {VG_SOURCES} here, got {source!r}")
    return vocabulary_source(source)


def vg_classes(vocab: VGVocab, source: str, split: str, path: str | Path | None = None) -> ClassLists:
    """The label spaces of a dicts.json vocabulary: the shipped lists of ``source`` when they are the same
    object and predicate lists (shipped things + stuff, in order), else (``closed`` only) the file's lists as
    thing classes. Raises DatasetError naming ``path`` when ``split`` is not ``closed`` and they differ."""
    shipped = load_class_lists(vocab_source(source))
    if (tuple(vocab.object_classes), tuple(vocab.predicate_classes)) == (
        shipped.object_classes,
        shipped.predicate_classes,
    ):
        return shipped
    if split != "closed":
        name = vocab_source(source)
        raise DatasetError(
            f"dicts.json class lists differ from the {name} lists shipped in pipeline/data/{name}_classes.json, "
            f"on which data.split={split} is defined",
            path=path,
        )
    return ClassLists(tuple(vocab.object_classes), (), tuple(vocab.predicate_classes), ())


def open_vocab_split(source: str, split: Split, classes: ClassLists) -> OpenVocabSplit:
    """The :class:`OpenVocabSplit` of the split in use: its novel ids, and the ``novel_to_base`` lists of
    ``<vocab source>_split.json`` for its novel objects (empty when the file has none: novel boxes are
    removed)."""
    mapping: dict[int, tuple[int, ...]] = {}
    if split.novel_objects:
        raw = read_data_file(f"{vocab_source(source)}_split.json")
        if raw.get("novel_to_base"):
            full = OpenVocabSplit.from_names(raw, classes.object_classes, classes.predicate_classes)
            mapping = {k: v for k, v in full.novel_to_base.items() if k in split.novel_objects}
    return OpenVocabSplit(split.novel_predicates, split.novel_objects, mapping)


def index_record(record: VGRecord, num_things: int, split: Split) -> IndexRecord:
    """A VG record as a box record of the index (module doc)."""
    labels = record.labels.astype(int).tolist()
    rec = IndexRecord(
        image_id=record.image_id,
        file_name=record.file_name,
        pan_seg_file_name="",
        height=int(record.height),
        width=int(record.width),
        segment_ids=[],
        category_ids=labels,
        isthing=[label < num_things for label in labels],
        bboxes=record.boxes.astype("float32").tolist(),
        relations=record.relations.astype(int).tolist(),
    )
    return replace(rec, usable_for_calibration=usable_for_calibration(rec, split))


@dataclass(frozen=True)
class VGInputs:
    """The triple to read, the image extension and the image root as the index stores it."""

    files: VGFiles
    image_ext: str
    stored_root: str


def vg_inputs(params: Any, work: Path, stored_root_of: Callable[[str], str], progress: bool = True) -> VGInputs:
    """Generate (``synthetic-vg``) or locate (``vg``) the triple. ``stored_root_of(path)`` turns a user image
    root into the string the index stores."""
    data, prep = params.data, params.prepare
    if data.source == "synthetic-vg":
        syn = prep.synthetic
        files = generate_vg_dataset(work / "dataset", **generation_args(prep), progress=progress)
        return VGInputs(files, syn.image_format, f"../dataset/{files.image_root.name}")
    missing = missing_vg_paths(data)
    if missing:
        raise ValueError(
            "data.source=vg needs data.vg_h5, data.vg_dicts, data.vg_image_data and data.image_root; "
            f"missing: {', '.join(missing)}"
        )
    image_root = Path(data.image_root)
    if not image_root.is_dir():
        raise DatasetError("data.image_root is not a folder", path=image_root)
    files = VGFiles(Path(data.vg_h5), Path(data.vg_dicts), Path(data.vg_image_data), image_root)
    return VGInputs(files, "jpg", stored_root_of(data.image_root))


def _zeros(keys: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(keys, 0)


def _iterate(
    reader: VGReader,
    split: str,
    on_error: str,
    num_val: int,
    seed: int,
    skipped: list[dict[str, Any]],
    stats: dict[str, int],
    progress: bool,
    filter_non_overlap: bool = True,
) -> Iterator[VGRecord]:
    total = len(reader.split_indices(split, num_val))
    found: list[dict[str, Any]] = []
    records = reader.iter_split(
        split, on_error, num_val, filter_duplicate_rels=False, filter_non_overlap=filter_non_overlap, seed=seed,
        skipped=found, stats=stats,
    )  # fmt: skip
    try:
        yield from tqdm(records, desc=f"read VG {split}", total=total, disable=not progress)
    except DatasetError as err:
        err.hint = ON_ERROR_HINT
        raise
    finally:
        skipped += [{**s, "split": split} for s in found]


def read_vg_records(
    reader: VGReader,
    source: str,
    classes: ClassLists,
    split: Split,
    on_error: str,
    seed: int,
    progress: bool = True,
    filter_non_overlap: bool = True,
) -> tuple[dict[str, list[IndexRecord]], dict[str, Any]]:
    """Read train and test (module doc; ``filter_non_overlap``: ``data.vg_filter_non_overlap``); returns
    ``{"train": [...], "test": [...]}`` and the report fields (``num_records``, ``duplicates_removed``,
    ``duplicates_by_image``, ``skipped`` and ``vg`` reader stats)."""
    num_val = NUM_VAL_BY_SOURCE[source]
    ov_split = open_vocab_split(source, split, classes)
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    out: dict[str, list[IndexRecord]] = {"train": [], "test": []}
    train_stats = _zeros(READER_TRAIN_KEYS + OPEN_VOCAB_KEYS)
    train_stats["images_dropped_open_vocab"] = 0
    test_stats = _zeros(READER_TEST_KEYS)
    duplicates: dict[str, int] = {}

    def unseen(record: VGRecord, stats: dict[str, int]) -> bool:
        if record.image_id not in seen:
            seen.add(record.image_id)
            return True
        err = DatasetError(f"h5 index {record.index}: image_id occurs twice in image_data.json", record.image_id,
                           reader.h5_path)  # fmt: skip
        if on_error == "fail":
            err.hint = ON_ERROR_HINT
            raise err
        skipped.append({"image_id": err.image_id, "index": record.index, "reason": err.reason, "file": err.path,
                        "split": record.split})  # fmt: skip
        stats["images_skipped"] += 1
        stats["images"] -= 1
        return False

    for record in _iterate(reader, "train", on_error, num_val, seed, skipped, train_stats, progress,
                           filter_non_overlap):
        if not unseen(record, train_stats):
            continue
        own: dict[str, int] = {}
        kept = open_vocab_training_record(record, split.name, ov_split, seed, stats=own)  # data.split = the mode
        for key, n in own.items():
            train_stats[key] = train_stats.get(key, 0) + n
        if own.get("relations_removed_duplicate"):
            duplicates[record.image_id] = own["relations_removed_duplicate"]
        if kept is None:
            train_stats["images_dropped_open_vocab"] += 1
            continue
        out["train"].append(index_record(kept, classes.num_things, split))
    for record in _iterate(reader, "test", on_error, num_val, seed, skipped, test_stats, progress):
        if unseen(record, test_stats):
            out["test"].append(index_record(record, classes.num_things, split))
    if not out["train"] and not out["test"]:
        raise DatasetError("no valid record left", path=reader.h5_path)
    skipped.sort(key=lambda s: s["index"])  # h5 order
    train_stats["relations_removed_open_vocab"] = sum(
        train_stats[k] for k in ("relations_removed_ovr", "relations_removed_ovd", "relations_removed_cap")
    )
    fields = {
        "num_records": int(reader.num_images),
        "test_image_ids_without_record": 0,
        "duplicates_removed": train_stats["relations_removed_duplicate"],
        "duplicates_by_image": duplicates,
        "crowd_segments": 0,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "vg": {
            "num_val": num_val,
            "val_images": len(reader.split_indices("val", num_val)),
            "open_vocab_mode": split.name,
            "novel_to_base_relabelling": bool(ov_split.novel_to_base and any(ov_split.novel_to_base.values())),
            "train": train_stats,
            "test": test_stats,
        },
    }
    return out, fields


def prepare_vg(
    params: Any, work: Path, stored_root_of: Callable[[str], str], progress: bool = True
) -> tuple[dict[str, list[IndexRecord]], ClassLists, Split, str, dict[str, Any]]:
    """The VG path of ``prepare``: records, label spaces, split, stored image root and report fields."""
    data = params.data
    inputs = vg_inputs(params, work, stored_root_of, progress)
    f = inputs.files
    with VGReader(f.h5, f.dicts, f.image_data, f.image_root, image_ext=inputs.image_ext) as reader:
        classes = vg_classes(reader.vocab, data.source, data.split, f.dicts)
        split = load_split(vocab_source(data.source), data.split)
        records, fields = read_vg_records(
            reader, data.source, classes, split, data.on_error, params.prepare.seed, progress,
            data.vg_filter_non_overlap,
        )
    return records, classes, split, inputs.stored_root, fields
