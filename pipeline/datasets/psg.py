"""Reading a PSG-format ``psg.json`` and validating its records against the image and panoptic files.

Layout (OpenPSG release): top-level ``thing_classes``, ``stuff_classes``, ``predicate_classes``,
``test_image_ids`` and ``data`` (per-image records with ``image_id``, ``file_name``, ``pan_seg_file_name``,
``height``, ``width``, ``segments_info``, parallel ``annotations`` and ``relations`` ``[s, o, p]``). File names
are relative to an image root (the COCO root for real PSG).

:func:`load_psg_json` refuses, with a :class:`DatasetError` naming the file, a path that is not a regular file,
unreadable or invalid JSON, JSON nested too deeply to parse (instead of a ``RecursionError``) and a wrong
top-level layout.

:func:`validate_record` checks one record and returns a clean :class:`IndexRecord`. Failures raise
:class:`DatasetError` naming the image id (or, for a record without a usable ``image_id`` or one that is not a
JSON object, its position ``data[i]`` in the file), the file and the reason: a missing field or wrong type; a
path that is absolute, contains ``..`` or a NUL (checked lexically, so a symlinked COCO folder inside the root
still works); ``annotations`` not parallel to ``segments_info``; a category, predicate or relation index out of
range; a relation whose subject and object are the same segment; a record larger than PIL's decompression-bomb
limit (``PIL.Image.MAX_IMAGE_PIXELS``); an image or PNG path that is missing, unreadable or not a regular file
(a named pipe or a folder is refused before it is read, so it can never hang the stage), or whose header
declares an oversized image (``DecompressionBombError``); a size that differs from the record (checked on the
header, before the pixels are decoded); a segment id absent from the PNG; a non-zero PNG id absent from
``segments_info``. Every per-record problem, whatever the decoder raised, is a :class:`DatasetError`, so
``data.on_error: skip`` skips exactly the bad records. Exact duplicate triplets are not errors: they are
removed (first occurrence kept) and counted.

Crowd segments (COCO ``iscrowd: 1``, e.g. one segment for a crowd of people) are kept as ordinary segments, as
OpenPSG trains and evaluates on them: a crowd is a valid subject or object of a relation. ``iscrowd``, when
present, must be 0 or 1 (a boolean); ``prepare`` counts the crowd segments it keeps in ``report.json``
(``crowd_segments``) so that a dataset made mostly of crowds is visible.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import reprlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from pipeline.datasets.index import IndexRecord
from pipeline.datasets.panoptic import rgb2id

TOP_LEVEL_KEYS = ("thing_classes", "stuff_classes", "predicate_classes", "test_image_ids", "data")


_REPR = reprlib.Repr()  # a bounded repr of input values: a deeply nested one cannot overflow the stack
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 40, 40, 4, 4
_show = _REPR.repr


class DatasetError(ValueError):
    """A bad dataset file or record; ``image_id`` is None for file-level problems and for records without a
    usable id, which are named by ``position`` (their index in the file's ``data`` list) instead. ``hint``, when
    set, is what the user can do about it (printed under the message by :mod:`pipeline.runner`)."""

    def __init__(
        self, reason: str, image_id: str | None = None, path: str | Path | None = None, position: int | None = None
    ) -> None:
        self.reason, self.image_id, self.path = reason, image_id, None if path is None else str(path)
        self.position = position
        self.hint: str | None = None
        where = f"image {image_id}: " if image_id is not None else f"data[{position}]: " if position is not None else ""
        super().__init__(f"{where}{reason}" + (f" ({self.path})" if self.path else ""))


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, with its article."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


@contextlib.contextmanager
def open_regular(path: Path, what: str, image_id: str | None = None) -> Iterator[Any]:
    """Open ``path`` for reading only if it is a regular file (symlinks followed); else :class:`DatasetError`.

    The file is opened non-blocking and checked with ``fstat`` before anything is read, so a named pipe, a
    device or a folder is refused at once instead of hanging or failing later, and no swap between the check
    and the read is possible.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(f"{what} missing", image_id, path) from None
    except (OSError, ValueError) as err:  # permission, name too long, loop, embedded NUL, ...
        raise DatasetError(f"{what} unreadable: {err}", image_id, path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a special file"
            raise DatasetError(f"{what} is not a regular file ({kind})", image_id, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


@dataclass
class PSGFile:
    """A parsed psg.json; ``records`` are the raw ``data`` dicts (validated one by one later)."""

    path: Path
    thing_classes: list[str]
    stuff_classes: list[str]
    predicate_classes: list[str]
    test_image_ids: set[str]
    records: list[dict[str, Any]]


def load_psg_json(path: str | Path) -> PSGFile:
    """Read psg.json once and check its top-level layout (file-level problems raise :class:`DatasetError`)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise DatasetError("psg.json not found", path=path)
    with open_regular(path, "psg.json") as f:
        try:
            raw = json.loads(f.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"psg.json is not readable JSON: {err}", path=path) from None
        except RecursionError:
            raise DatasetError("psg.json is nested too deeply to parse (corrupt or hostile)", path=path) from None
    if not isinstance(raw, dict):
        raise DatasetError("psg.json must hold a JSON object", path=path)
    missing = [k for k in TOP_LEVEL_KEYS if k not in raw]
    if missing:
        raise DatasetError(f"psg.json lacks top-level keys {missing}", path=path)
    for key in TOP_LEVEL_KEYS:
        if not isinstance(raw[key], list):
            raise DatasetError(f"psg.json '{key}' must be a list", path=path)
    for key in TOP_LEVEL_KEYS[:3]:
        if not all(isinstance(n, str) for n in raw[key]):
            raise DatasetError(f"psg.json '{key}' must be a list of names", path=path)
    if not all(_is_id(i) for i in raw["test_image_ids"]):
        raise DatasetError("psg.json 'test_image_ids' must be a list of image ids (strings or integers)", path=path)
    return PSGFile(
        path=path,
        thing_classes=raw["thing_classes"],
        stuff_classes=raw["stuff_classes"],
        predicate_classes=raw["predicate_classes"],
        test_image_ids={str(i) for i in raw["test_image_ids"]},
        records=raw["data"],
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_id(x: Any) -> bool:
    return (isinstance(x, str) and x != "") or _is_int(x)


def record_image_id(record: Any) -> str | None:
    """The record's image id as a string (None when absent or not a non-empty string / integer)."""
    if isinstance(record, dict) and _is_id(record.get("image_id")):
        return str(record["image_id"])
    return None


def check_relative_path(name: Any, key: str, image_id: str) -> str:
    """Return ``name`` if it is a relative path that stays inside the dataset root, else raise."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"'{key}' must be a non-empty string", image_id)
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise DatasetError(f"'{key}' is an absolute path, which escapes the dataset root: {name!r}", image_id)
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DatasetError(f"'{key}' escapes the dataset root: {name!r}", image_id)
    if "\0" in name:
        raise DatasetError(f"'{key}' contains a NUL character: {_show(name)}", image_id)
    return name


def _decoder_error(what: str, err: Exception, image_id: str, path: Path) -> DatasetError:
    """Whatever PIL raised on a corrupt or hostile file (OSError, SyntaxError, struct/zlib errors, a
    decompression bomb, MemoryError, ...) as the record's :class:`DatasetError`."""
    if isinstance(err, DatasetError):
        return err
    if isinstance(err, Image.DecompressionBombError):
        return DatasetError(f"{what} declares an oversized image (decompression bomb): {err}", image_id, path)
    detail = str(err) or type(err).__name__
    return DatasetError(f"{what} unreadable: {detail}", image_id, path)


def _check_size(what: str, size: tuple[int, int], width: int, height: int, image_id: str, path: Path) -> None:
    if size != (width, height):
        raise DatasetError(
            f"{what} size {size[0]}x{size[1]} differs from the record's {width}x{height}", image_id, path
        )


def _check_image(path: Path, width: int, height: int, image_id: str) -> None:
    with open_regular(path, "image file", image_id) as f:
        try:
            with Image.open(f) as im:
                _check_size("image", im.size, width, height, image_id, path)
                if im.format == "JPEG":  # decode at 1/8 scale: reads the whole stream, catches truncation
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
        except Exception as err:
            raise _decoder_error("image", err, image_id, path) from None


def _read_ids(path: Path, width: int, height: int, image_id: str) -> np.ndarray:
    """The segment id map of a COCO-panoptic PNG (8-bit RGB; size checked on the header before decoding)."""
    with open_regular(path, "panoptic PNG", image_id) as f:
        try:
            with Image.open(f) as im:
                _check_size("panoptic PNG", im.size, width, height, image_id, path)
                if im.mode != "RGB":
                    raise DatasetError(f"panoptic PNG must be 8-bit RGB, got mode {im.mode!r}", image_id, path)
                return rgb2id(np.asarray(im))
        except Exception as err:
            raise _decoder_error("panoptic PNG", err, image_id, path) from None


def _check_segments(record: dict, num_things: int, num_objects: int, image_id: str) -> tuple[list, list]:
    segments, annotations = record["segments_info"], record["annotations"]
    if not isinstance(segments, list) or not isinstance(annotations, list):
        raise DatasetError("'segments_info' and 'annotations' must be lists", image_id)
    if len(segments) != len(annotations):
        raise DatasetError(
            f"'annotations' ({len(annotations)}) is not parallel to 'segments_info' ({len(segments)})", image_id
        )
    seen: set[int] = set()
    bboxes = []
    for i, (seg, ann) in enumerate(zip(segments, annotations)):
        if not isinstance(seg, dict) or not _is_int(seg.get("id")) or not _is_int(seg.get("category_id")):
            raise DatasetError(f"segments_info[{i}] needs integer 'id' and 'category_id'", image_id)
        sid, cat = seg["id"], seg["category_id"]
        if sid <= 0 or sid in seen:
            raise DatasetError(f"segments_info[{i}] id {sid} is not a positive unique id", image_id)
        seen.add(sid)
        if not 0 <= cat < num_objects:
            raise DatasetError(f"segments_info[{i}] category_id {cat} out of range [0, {num_objects})", image_id)
        for flag in ("isthing", "iscrowd"):
            if flag in seg and seg[flag] not in (0, 1):  # 0/1 or a boolean
                raise DatasetError(f"segments_info[{i}] {flag} must be 0 or 1, got {_show(seg[flag])}", image_id)
        if "isthing" in seg and bool(seg["isthing"]) != (cat < num_things):
            raise DatasetError(f"segments_info[{i}] isthing={seg['isthing']} contradicts category {cat}", image_id)
        if not isinstance(ann, dict) or ann.get("category_id") != cat:
            raise DatasetError(f"annotations[{i}] category_id differs from segments_info[{i}] ({cat})", image_id)
        box = ann.get("bbox")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
            or box[2] < box[0]
            or box[3] < box[1]
        ):
            raise DatasetError(f"annotations[{i}] bbox must be [x1, y1, x2, y2] with x1<=x2, y1<=y2", image_id)
        bboxes.append([float(v) for v in box])
    return segments, bboxes


def _check_relations(relations: Any, num_segments: int, num_predicates: int, image_id: str) -> tuple[list, int]:
    if not isinstance(relations, list):
        raise DatasetError("'relations' must be a list", image_id)
    unique: dict[tuple[int, int, int], None] = {}
    for k, rel in enumerate(relations):
        if not isinstance(rel, list | tuple) or len(rel) != 3 or not all(_is_int(v) for v in rel):
            raise DatasetError(f"relations[{k}] must be [subject, object, predicate] integers", image_id)
        s, o, p = rel
        if not (0 <= s < num_segments and 0 <= o < num_segments):
            raise DatasetError(
                f"relations[{k}] = {list(rel)}: segment index out of range [0, {num_segments})", image_id
            )
        if not 0 <= p < num_predicates:
            raise DatasetError(f"relations[{k}] = {list(rel)}: predicate out of range [0, {num_predicates})", image_id)
        if s == o:
            raise DatasetError(f"relations[{k}] = {list(rel)}: subject and object are the same segment", image_id)
        unique.setdefault((s, o, p), None)
    return [list(r) for r in unique], len(relations) - len(unique)


def validate_record(
    record: Any,
    image_root: str | Path,
    num_things: int,
    num_objects: int,
    num_predicates: int,
    position: int | None = None,
) -> tuple[IndexRecord, int]:
    """Validate one psg.json record (``position``: its index in ``data``) against its files under ``image_root``.

    Returns the clean record (``usable_for_calibration`` left False; the caller sets it for its split) and
    the number of duplicate triplets removed. Raises :class:`DatasetError` on the first problem.
    """
    if not isinstance(record, dict):
        raise DatasetError(f"record must be a JSON object, got {_json_type(record)}", position=position)
    if record.get("image_id") is None:
        raise DatasetError("record has no 'image_id'", position=position)
    image_id = record_image_id(record)
    if image_id is None:
        raise DatasetError(
            f"record 'image_id' must be a non-empty string or an integer, got {_show(record['image_id'])}",
            position=position,
        )
    for key in ("file_name", "pan_seg_file_name", "height", "width", "segments_info", "annotations", "relations"):
        if key not in record:
            raise DatasetError(f"record lacks '{key}'", image_id)
    file_name = check_relative_path(record["file_name"], "file_name", image_id)
    pan_name = check_relative_path(record["pan_seg_file_name"], "pan_seg_file_name", image_id)
    height, width = record["height"], record["width"]
    if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
        raise DatasetError(f"height/width must be positive integers, got {_show(height)}/{_show(width)}", image_id)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and height * width > limit:
        raise DatasetError(f"record size {width}x{height} exceeds PIL's limit of {limit} pixels", image_id)
    segments, bboxes = _check_segments(record, num_things, num_objects, image_id)
    relations, duplicates = _check_relations(record["relations"], len(segments), num_predicates, image_id)

    root = Path(image_root)
    _check_image(root / file_name, width, height, image_id)
    ids = _read_ids(root / pan_name, width, height, image_id)
    present = set(np.unique(ids).tolist()) - {0}
    segment_ids = [int(s["id"]) for s in segments]
    absent = [s for s in segment_ids if s not in present]
    if absent:
        raise DatasetError(
            f"segment ids {absent} of segments_info are absent from the panoptic PNG", image_id, root / pan_name
        )
    unknown = sorted(present - set(segment_ids))
    if unknown:
        raise DatasetError(f"panoptic PNG ids {unknown[:10]} are absent from segments_info", image_id, root / pan_name)

    clean = IndexRecord(
        image_id=image_id,
        file_name=file_name,
        pan_seg_file_name=pan_name,
        height=height,
        width=width,
        segment_ids=segment_ids,
        category_ids=[int(s["category_id"]) for s in segments],
        isthing=[int(s["category_id"]) < num_things for s in segments],
        bboxes=bboxes,
        relations=relations,
        image_root=str(root),
    )
    return clean, duplicates
