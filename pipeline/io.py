"""Atomic writes: every output file or folder of the pipeline appears whole or not at all.

One naming convention for work in progress: ``<parent>/.<name>.tmp-<pid>`` (and ``.<name>.old-<pid>`` for the
previous version while a folder is swapped in). Both are hidden names that never collide with an output, and
:func:`sweep_temps` removes the leftovers of a killed process on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def temp_path(path: str | Path, mark: str = TMP_MARK) -> Path:
    """``dir/name`` -> ``dir/.name.tmp-<pid>``: the work-in-progress name of ``path`` for this process."""
    path = Path(path)
    return path.with_name(f".{path.name}{mark}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temps(path: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` leftovers of ``path`` whose process is gone.

    Returns the removed paths. A leftover of a still-running process (another rank, a concurrent run) is kept.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for mark in (TMP_MARK, OLD_MARK):
        for cand in path.parent.glob(f".{path.name}{mark}*"):
            pid = cand.name.rsplit(mark, 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                _remove(cand)
                removed.append(cand)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a folder in ``.<name>.tmp-<pid>`` and swap it in for ``path`` when the block succeeds.

    On an exception (or Ctrl-C) the temporary folder is removed and ``path`` is left as it was. The previous
    folder is moved aside (``.<name>.old-<pid>``) before the rename and removed after it, so ``path`` is
    always either the old or the new version::

        with atomic_dir(paths.TRAIN) as tmp:
            save_file(..., tmp / "model.safetensors")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, path)


def replace_path(src: str | Path, dst: str | Path) -> None:
    """Move ``src`` (file or folder) to ``dst``, replacing what is there with at most one rename of a gap."""
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        old = temp_path(dst, OLD_MARK)
        _remove(old)
        os.rename(dst, old)
        os.rename(src, dst)
        _remove(old)
    else:
        os.rename(src, dst)
