"""Content digests: the one way the pipeline fingerprints settings, files and folders.

* :func:`json_digest` — settings (checkpoint keys, cache keys): SHA-256 of canonical JSON.
* :func:`bytes_digest` — raw bytes (e.g. a newline-joined list of image ids).
* :func:`file_digest` — one file's bytes, read in blocks (from :mod:`spade_core.hashing`, which the model
  identities of spade_core use too).
* :func:`tree_digest` — a folder: relative names and file digests, in sorted order.
* :func:`code_digest` — the project's source files (checkpoint keys: a checkpoint written by other code is not
  resumed).

All return the first ``length`` hex digits (16 by default: 64 bits, ample to tell artifacts apart).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from spade_core.hashing import DIGEST_LENGTH, file_digest, update_with_file

__all__ = ["DIGEST_LENGTH", "bytes_digest", "code_digest", "file_digest", "json_digest", "tree_digest",
           "update_with_file"]

PROJECT_PACKAGES = ("spade_core", "pipeline", "stages")


def bytes_digest(data: bytes, length: int = DIGEST_LENGTH) -> str:
    """Digest of ``data``."""
    return hashlib.sha256(data).hexdigest()[:length]


def json_digest(obj: Any, length: int = DIGEST_LENGTH) -> str:
    """Digest of ``obj`` as canonical JSON (sorted keys; non-JSON values through ``str``)."""
    return bytes_digest(json.dumps(obj, sort_keys=True, default=str).encode(), length)


def tree_digest(
    root: str | Path,
    files: Iterable[Path] | None = None,
    length: int = DIGEST_LENGTH,
    keep: Callable[[Path], bool] | None = None,
) -> str:
    """Digest of a folder: every file's path relative to ``root`` and its digest, sorted by path.

    ``files`` restricts it to those files (default: every file under ``root``); ``keep`` filters them.
    Raises ``FileNotFoundError`` naming ``root`` when it does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    chosen = sorted(Path(f) for f in files) if files is not None else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in chosen:
        if keep is not None and not keep(f):
            continue
        h.update(f.relative_to(root).as_posix().encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()[:length]


def code_digest(packages: Iterable[str] = PROJECT_PACKAGES, length: int = DIGEST_LENGTH) -> str:
    """Digest of the project's source: every ``.py`` file of ``packages`` (found with ``importlib``, not
    imported), relative names and file digests. Conservative on purpose: any code change, also one DVC would not
    rerun a stage for, changes it, so a checkpoint is only resumed by the code that wrote it."""
    h = hashlib.sha256()
    for name in sorted(packages):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"code_digest: no package {name!r}")
        root = Path(next(iter(spec.submodule_search_locations)))
        h.update(name.encode())
        h.update(tree_digest(root, root.rglob("*.py")).encode())
    return h.hexdigest()[:length]
