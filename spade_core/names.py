"""Readable class names: dataset category names (COCO panoptic style) as a prompt or a classifier reads them.

Kept free of heavy imports so that ``prepare`` can name classes without loading the diffusion stack.
"""

from __future__ import annotations

import re

_SUFFIXES = ("-merged", "-other", "-stuff")


def readable_name(category_name: str) -> str:
    """``"wall-other-merged"`` -> ``"wall"``, ``"playing_field"`` -> ``"playing field"``."""
    name = category_name.strip()
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name, changed = name[: -len(suffix)], True
    return re.sub(r"\s+", " ", name.replace("-", " ").replace("_", " ")).strip()
