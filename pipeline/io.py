"""Atomic writes: every output file or folder of the pipeline appears whole or not at all.

One naming convention for work in progress: ``<parent>/.<name>.tmp-<pid>`` (and ``.<name>.old-<pid>`` for the
previous version while a folder is swapped in, ``.spade-probe.tmp-<pid>`` for the write probe of
:func:`ensure_writable`). They are hidden names that never collide with an output. :func:`sweep_temps` (the
leftovers of one path) and :func:`sweep_leftovers` (every such name in a folder) remove those of a killed
process on the next run: only names whose pid is not a live process (or is this process) are touched, and an
``.old-`` copy whose output is missing (a kill between the two renames of :func:`replace_path`) is renamed
back instead of removed. Zarr's own ``*.partial`` chunk temporaries are swept by :mod:`pipeline.stores`.

Every stage calls :func:`prepare_outputs` on its outputs before any work: the sweep above, beside and inside
each output, then :func:`ensure_writable`, which fails fast (:class:`OutputNotWritableError`, one line naming
the path) when an output cannot be written, instead of after the training steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
PROBE_NAME = "spade-probe"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)(?P<mark>\.tmp-|\.old-)(?P<pid>\d+)$")


class OutputNotWritableError(PermissionError):
    """An output path (or the folder that would receive it) cannot be written by this process."""

    hint = "check the folder's owner and permissions, and that its file system is not mounted read-only"


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


def _dead(pid: str) -> bool:
    return int(pid) == os.getpid() or not _pid_alive(int(pid))


def _sweep_one(cand: Path, name: str, mark: str) -> Path:
    """Remove (or, for an ``.old-`` copy whose output is gone, restore) one leftover; the path acted on."""
    target = cand.with_name(name)
    if mark == OLD_MARK and not (target.exists() or target.is_symlink()):
        with contextlib.suppress(OSError):
            os.rename(cand, target)
            return target
    _remove(cand)
    return cand


def sweep_temps(path: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` leftovers of ``path`` whose process is gone.

    Returns the paths acted on. A leftover of a still-running process (another rank, a concurrent run) is
    kept; an ``.old-`` copy is renamed back to ``path`` when ``path`` itself is missing.
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for mark in (TMP_MARK, OLD_MARK):
        for cand in sorted(path.parent.glob(f".{path.name}{mark}*")):
            pid = cand.name.rsplit(mark, 1)[-1]
            if pid.isdigit() and _dead(pid):
                removed.append(_sweep_one(cand, path.name, mark))
    return removed


def sweep_leftovers(folder: str | Path) -> list[Path]:
    """:func:`sweep_temps` for every ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` entry of ``folder``."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    removed: list[Path] = []
    found = [(cand, _LEFTOVER.match(cand.name)) for cand in sorted(folder.iterdir())]
    for cand, m in sorted((c for c in found if c[1]), key=lambda c: c[1]["mark"] == OLD_MARK):  # .tmp- first
        if _dead(m["pid"]):
            removed.append(_sweep_one(cand, m["name"], m["mark"]))
    return removed


def _nearest_folder(path: Path) -> Path:
    """The folder that receives ``path`` (``path`` itself when it is a folder): its nearest existing ancestor."""
    here = path if path.is_dir() else path.parent
    while not (here.exists() or here.is_symlink()) and here != here.parent:
        here = here.parent
    return here


def ensure_writable(path: str | Path) -> Path:
    """Fail fast unless this process can write ``path``: raises :class:`OutputNotWritableError` naming it.

    Checks the folder that receives ``path`` (the nearest existing ancestor; for an existing folder, the
    folder itself and its parent, since a replaced folder is renamed in its parent) by creating and removing
    a probe file there. An attempt is the only honest test: it covers permission bits, ACLs and read-only
    mounts alike, and agrees with what the stage will meet; in particular a process running as root may write
    into a ``chmod 0o555`` folder, and so passes. Returns ``path``.
    """
    path = Path(path)
    folders = [_nearest_folder(path)]
    if path.is_dir() and path.parent != path:
        folders.append(_nearest_folder(path.parent))
    for folder in folders:
        if not folder.is_dir():
            raise OutputNotWritableError(f"{path}: cannot be created, {folder} is not a folder")
        probe = folder / f".{PROBE_NAME}{TMP_MARK}{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # a probe of this process (a concurrent check): the folder is writable
        except OSError as err:
            raise OutputNotWritableError(
                f"{path}: output is not writable ({folder}: {err.strerror or err})"
            ) from None
        os.close(fd)
        probe.unlink(missing_ok=True)
    return path


def prepare_outputs(*paths: str | Path) -> None:
    """Stage start: sweep the leftovers of killed runs beside (and inside) each output, then check each output
    is writable (:func:`ensure_writable`), so that a read-only output fails before the work, not after it."""
    for p in map(Path, paths):
        sweep_leftovers(p.parent)
        if p.is_dir() and not p.is_symlink():
            sweep_leftovers(p)
    for p in paths:
        ensure_writable(p)


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


def write_metrics(figures: dict[str, Any], run_keys: Sequence[str], metrics_path: str | Path,
                  run_path: str | Path) -> None:
    """Write a stage's ``figures`` as two JSON files: the ``run_keys`` (timings, process count, device, model
    identities: what differs between two runs that give the same results) to ``run_path``, the rest (what the run
    measured) to ``metrics_path``, the DVC metrics file, so that ``dvc metrics show`` / ``dvc exp show`` lead
    with results."""
    atomic_write_json(run_path, {k: figures[k] for k in run_keys if k in figures})
    atomic_write_json(metrics_path, {k: v for k, v in figures.items() if k not in run_keys})


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
