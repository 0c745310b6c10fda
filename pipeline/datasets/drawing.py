"""Drawing primitives of the synthetic dataset: shape masks, stuff textures, wavy bands, shaded things.

All functions are deterministic given their arguments (and the ``numpy`` generator they are passed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pipeline.datasets.spatial import outer_ring

STUFF_COLOURS = {
    "sky": (110, 165, 230),
    "wall": (170, 150, 140),
    "grass": (85, 145, 55),
    "floor": (150, 105, 65),
    "water": (45, 105, 165),
    "sand": (215, 190, 135),
}


def _polygon(shape: str, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(0, -r), (r, r), (-r, r)]
    if shape == "diamond":
        return [(0, -r), (0.75 * r, 0), (0, r), (-0.75 * r, 0)]
    if shape == "square":
        return [(-0.9 * r, -0.9 * r), (0.9 * r, -0.9 * r), (0.9 * r, 0.9 * r), (-0.9 * r, 0.9 * r)]
    if shape == "hexagon":
        return [(r * np.cos(a), r * np.sin(a)) for a in np.arange(6) * np.pi / 3]
    if shape == "star":
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [-np.pi / 2 + k * np.pi / 5 for k in range(10)]
        return [(q * np.cos(a), q * np.sin(a)) for q, a in zip(radii, angles)]
    if shape == "cross":
        a = 0.35 * r  # half width of the arms; walk one quarter and rotate it four times
        quarter = [(-a, -r), (a, -r), (a, -a)]
        return [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in quarter]
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        scale = r / 16.5
        return list(zip(x * scale, (y + 2.5) * scale))
    raise ValueError(f"unknown shape {shape!r}")


def render_shape(shape: str, diameter: int, size: int) -> np.ndarray:
    """Mask ``[size, size]`` bool of ``shape`` with extent ``diameter`` centred at ``(size // 2, size // 2)``."""
    c, r = size // 2, diameter / 2
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    box = [c - r, c - r, c + r - 1, c + r - 1]
    if shape in ("circle", "ring", "moon"):
        draw.ellipse(box, fill=1)
        if shape == "ring":
            draw.ellipse([c - 0.45 * r, c - 0.45 * r, c + 0.45 * r - 1, c + 0.45 * r - 1], fill=0)
        if shape == "moon":
            ox, oy = c + 0.45 * r, c - 0.25 * r
            draw.ellipse([ox - 0.8 * r, oy - 0.8 * r, ox + 0.8 * r, oy + 0.8 * r], fill=0)
    else:
        draw.polygon([(c + x, c + y) for x, y in _polygon(shape, r)], fill=1)
    return np.asarray(im, dtype=bool)


def translate(mask: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
    """Shift a mask by whole pixels; None if any pixel would leave the canvas."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if ys.min() + dy < 0 or ys.max() + dy >= h or xs.min() + dx < 0 or xs.max() + dx >= w:
        return None
    out = np.zeros_like(mask)
    out[ys + dy, xs + dx] = True
    return out


def stuff_texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Full-canvas texture ``[size, size, 3]`` float of one stuff class."""
    base = np.array(STUFF_COLOURS[name], dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if name == "sky":
        img += (yy * 70)[..., None] * np.array([1.0, 0.8, 0.2])
    elif name == "wall":
        bh = max(4, size // 16)
        rows = (np.arange(size) // bh)[:, None]
        mortar = (np.arange(size)[:, None] % bh == 0) | ((np.arange(size)[None] + (rows % 2) * bh) % (2 * bh) == 0)
        img[mortar] = (205, 198, 188)
    elif name == "grass":
        img += rng.normal(0, 10, (1, size, 1))
    elif name == "floor":
        img[np.arange(size) % max(5, size // 10) == 0] = (105, 70, 40)
    elif name == "water":
        img += (14 * np.sin(2 * np.pi * (xx * 6 + yy * 20 + rng.random())))[..., None]
    return img


def wavy_bands(layout: tuple[str, ...], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Masks ``[size, size]`` bool of 2-3 horizontal bands (top to bottom) split by gentle sine boundaries."""
    cuts = [rng.uniform(0.35, 0.6)] if len(layout) == 2 else [rng.uniform(0.3, 0.45), rng.uniform(0.62, 0.78)]
    x = np.arange(size)
    label = np.zeros((size, size), dtype=np.int64)
    for cut in cuts:
        amplitude, period, phase = rng.uniform(0, 0.03 * size), rng.uniform(0.5, 1.5) * size, rng.uniform(0, 6.3)
        wave = cut * size + amplitude * np.sin(2 * np.pi * x / period + phase)
        label += np.arange(size)[:, None] >= np.round(wave)[None]
    return [label == k for k in range(len(layout))]


def paint_thing(image: np.ndarray, colour: tuple[int, int, int], mask: np.ndarray) -> None:
    """Paint a shaded thing (lighter towards the top left, dark outline) into ``image`` at ``mask``."""
    ys, xs = np.nonzero(mask)
    d = max(np.ptp(ys), np.ptp(xs)) + 1
    shade = 1 + 0.25 * ((xs.mean() - xs) + (ys.mean() - ys)) / d
    edge = (outer_ring(~mask) & mask)[ys, xs]
    shade[edge] *= 0.45
    image[ys, xs] = np.array(colour, dtype=np.float64) * shade[:, None]
