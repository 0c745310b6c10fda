"""File content hashing: the one place spade_core reads a file's bytes into a SHA-256.

The model identities (:func:`spade_core.diffusion.models.model_identity`, ``ClipModels.identity``) are built on
these; :mod:`pipeline.hashing` builds its settings and folder digests on them too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

DIGEST_LENGTH = 16
_BLOCK = 1 << 22


def update_with_file(h: Any, path: str | Path) -> None:
    """Feed the bytes of ``path`` into the hash object ``h`` (block by block)."""
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def file_digest(path: str | Path, length: int | None = DIGEST_LENGTH) -> str:
    """SHA-256 of one file's bytes: the first ``length`` hex digits (``None``: all 64)."""
    h = hashlib.sha256()
    update_with_file(h, path)
    return h.hexdigest()[:length]
