"""COCO-panoptic PNG encoding and deterministic image I/O.

A panoptic PNG is an 8-bit RGB image whose pixel colour encodes a segment id:
``id = R + 256 * G + 256**2 * B`` (COCO ``rgb2id``); id 0 is void. Images and PNGs are written with PIL's
PNG encoder at a fixed compression level and no metadata, so the same array always gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_SEGMENT_ID = 256**3 - 1
PNG_COMPRESS_LEVEL = 6


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Decode a panoptic colour image ``[H, W, 3]`` uint8 into segment ids ``[H, W]`` int64."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape [H, W, 3], got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids ``[H, W]`` (integers in ``[0, 2**24)``) as colours ``[H, W, 3]`` uint8."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must have shape [H, W], got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be an integer array, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"ids must lie in [0, {MAX_SEGMENT_ID}], got range [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 array as a deterministic RGB PNG (parent folders are created)."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"array must be [H, W, 3] uint8, got {array.shape} {array.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Write a segment id map ``[H, W]`` as a COCO-panoptic RGB PNG."""
    write_png(path, id2rgb(ids))


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit (and 32-bit integer) greyscale


def read_image(path: str | Path, exif_orientation: bool = False) -> np.ndarray:
    """Read an image file (any PIL format, fully decoded) as ``[H, W, 3]`` uint8 RGB.

    16-bit greyscale is scaled to 8 bits (``v / 257``: 65535 -> 255), not clipped (PIL's ``convert("RGB")``
    clips every value above 255, which turns a 16-bit image white). ``exif_orientation``: apply the EXIF
    orientation tag (a photo shown the way its camera meant); off for dataset images, whose annotations refer
    to the stored pixel grid.
    """
    with Image.open(path) as im:
        if exif_orientation:
            im = ImageOps.exif_transpose(im)
        if im.mode in HIGH_BIT_MODES:
            grey = np.asarray(im, dtype=np.float64)
            grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.asarray(im.convert("RGB"))


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO-panoptic PNG as a segment id map ``[H, W]`` int64.

    Raises ``ValueError`` when the file is not an 8-bit RGB image (a palette or RGBA PNG would decode
    to wrong ids silently).
    """
    with Image.open(path) as im:
        if im.mode != "RGB":
            raise ValueError(f"panoptic PNG must be 8-bit RGB, got mode {im.mode!r}")
        return rgb2id(np.asarray(im))


def masks_from_ids(id_map: np.ndarray, segment_ids: list[int] | np.ndarray) -> np.ndarray:
    """Boolean masks ``[S, H, W]``, one per entry of ``segment_ids``, from an id map ``[H, W]``."""
    segment_ids = np.asarray(segment_ids, dtype=np.int64).reshape(-1, 1, 1)
    return np.asarray(id_map)[None] == segment_ids
