"""Datasets: the synthetic PSG-format generator, the PSG reader and validator, open-vocabulary splits, the
Parquet index, and the readers of what ``prepare`` writes (``classes.json``: :func:`read_classes`, ``split.json``:
:func:`read_split_file`). The ``prepare`` work itself is ``pipeline.datasets.prepare`` (not imported here: it
needs ``spade_core.diffusion``)."""

from pipeline.datasets.classes import ClassLists, load_class_lists, read_classes
from pipeline.datasets.index import (
    INDEX_SCHEMA,
    AnnotationError,
    IndexRecord,
    box_regions,
    read_index,
    read_index_table,
    write_index,
)
from pipeline.datasets.panoptic import id2rgb, read_panoptic_png, rgb2id, write_panoptic_png
from pipeline.datasets.psg import DatasetError, PSGFile, load_psg_json, validate_record
from pipeline.datasets.splits import (
    Split,
    TrainingRelations,
    load_split,
    read_split_file,
    training_relations,
    usable_for_calibration,
)
from pipeline.datasets.synthetic import generate_dataset, generate_scene

__all__ = [
    "INDEX_SCHEMA",
    "AnnotationError",
    "ClassLists",
    "DatasetError",
    "IndexRecord",
    "PSGFile",
    "Split",
    "TrainingRelations",
    "box_regions",
    "generate_dataset",
    "generate_scene",
    "id2rgb",
    "load_class_lists",
    "load_psg_json",
    "load_split",
    "read_classes",
    "read_index",
    "read_index_table",
    "read_panoptic_png",
    "read_split_file",
    "rgb2id",
    "training_relations",
    "usable_for_calibration",
    "validate_record",
    "write_index",
    "write_panoptic_png",
]
