"""Label spaces shipped with the package (``pipeline/data/<source>_classes.json``) and of a prepared dataset
(``data/prepared/classes.json``, :func:`read_classes`).

Object ``category_id`` = index into ``thing_classes + stuff_classes``; predicate id = index into
``predicate_classes`` (both 0-based, psg.json order). ``object_names`` are readable names for text prompts
(PSG: ``sky-other-merged`` -> ``sky``; synthetic and VG-150 names are readable already). VG-150
(``vg_classes.json``) has only thing classes (``stuff_classes`` empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline import paths

SOURCES = ("synthetic", "psg", "vg")
DATA_SOURCES = {"synthetic": "synthetic", "psg": "psg", "vg": "vg", "synthetic-vg": "synthetic"}


def vocabulary_source(data_source: str) -> str:
    """The shipped lists (``pipeline/data/<name>_*.json``: classes, split, spatial predicates) a ``data.source``
    uses: its own name, except ``synthetic-vg`` (the synthetic scenes written as VG) -> ``synthetic``."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data.source must be one of {sorted(DATA_SOURCES)}, got {data_source!r}")
    return DATA_SOURCES[data_source]


def read_data_file(name: str) -> dict[str, Any]:
    """Parse ``pipeline/data/<name>`` (a JSON file shipped with the package)."""
    return json.loads(resources.files("pipeline").joinpath("data", name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class ClassLists:
    """One dataset's label spaces (tuples, psg.json order)."""

    thing_classes: tuple[str, ...]
    stuff_classes: tuple[str, ...]
    predicate_classes: tuple[str, ...]
    stuff_names: tuple[str, ...]

    @property
    def object_classes(self) -> tuple[str, ...]:
        return self.thing_classes + self.stuff_classes

    @property
    def object_names(self) -> tuple[str, ...]:
        """Readable object names, aligned with :attr:`object_classes`."""
        return self.thing_classes + self.stuff_names

    @property
    def predicate_names(self) -> tuple[str, ...]:
        """Predicate names for text prompts (the predicate classes: already readable)."""
        return self.predicate_classes

    @property
    def num_things(self) -> int:
        return len(self.thing_classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "thing_classes": list(self.thing_classes),
            "stuff_classes": list(self.stuff_classes),
            "predicate_classes": list(self.predicate_classes),
            "object_classes": list(self.object_classes),
            "object_names": list(self.object_names),
            "predicate_names": list(self.predicate_classes),
        }


@cache
def load_class_lists(source: str) -> ClassLists:
    """The shipped label spaces of ``source`` (``"synthetic"``, ``"psg"`` or ``"vg"``)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    raw = read_data_file(f"{source}_classes.json")
    stuff_names = raw.get("stuff_readable_names", raw["stuff_classes"])
    return ClassLists(
        thing_classes=tuple(raw["thing_classes"]),
        stuff_classes=tuple(raw["stuff_classes"]),
        predicate_classes=tuple(raw["predicate_classes"]),
        stuff_names=tuple(stuff_names),
    )


def read_classes(path: str | Path = paths.CLASSES_JSON) -> ClassLists:
    """The label spaces of a prepared dataset: the ``classes.json`` that ``prepare`` wrote."""
    data = json.loads(Path(path).read_text())
    return ClassLists(
        thing_classes=tuple(data["thing_classes"]),
        stuff_classes=tuple(data["stuff_classes"]),
        predicate_classes=tuple(data["predicate_classes"]),
        stuff_names=tuple(data["object_names"][len(data["thing_classes"]) :]),
    )
