"""Pictures of scene graphs and of per-predicate recall (PIL for images, matplotlib Agg for the bar chart).

Colours are deterministic: segment ``i`` gets ``PALETTE[i % len(PALETTE)]``. Text uses matplotlib's bundled
DejaVu Sans (same glyphs on every machine), falling back to PIL's default font.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.io import atomic_write_bytes
from pipeline.psg_data import is_box_ground_truth

PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
        (0, 0, 128),
        (128, 128, 128),
    ],
    dtype=np.float64,
)
HIT, TEXT, BACKGROUND = (0, 140, 0), (20, 20, 20), (255, 255, 255)


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def display_names(labels: Sequence[int], object_names: Sequence[str]) -> list[str]:
    """The name shown for each instance: its class name, with ``#k`` (1-based, in instance order) when the
    class occurs more than once (``rocket #1 in front of rocket #2``)."""
    counts = Counter(int(c) for c in labels)
    seen: Counter = Counter()
    out = []
    for c in labels:
        seen[int(c)] += 1
        out.append(object_names[int(c)] + (f" #{seen[int(c)]}" if counts[int(c)] > 1 else ""))
    return out


def upscale_factor(image: np.ndarray, min_size: int) -> int:
    """Integer factor that brings the image's short side to at least ``min_size`` (1 for large images)."""
    return max(1, -(-min_size // max(1, min(image.shape[:2]))))


def font_size(canvas_shape: tuple[int, ...]) -> int:
    """Text size for a picture: ~1/45 of its short side, at least 11 px (readable on 256 px and 3000 px)."""
    return max(11, round(min(canvas_shape[:2]) / 45))


def mask_outlines(masks: np.ndarray, width: int) -> np.ndarray:
    """bool ``[N, H, W]``: the boundary band (``width`` px, inside each mask) of every mask."""
    from scipy.ndimage import binary_erosion

    structure = np.ones((3, 3), dtype=bool)
    edges = [m & ~binary_erosion(m, structure, iterations=width, border_value=0) for m in masks]
    return np.stack(edges) if edges else np.zeros_like(masks, dtype=bool)


class _LabelPlacer:
    """Puts each name at its anchor, moved up or down by text lines until it overlaps no earlier name."""

    def __init__(self, font, size: tuple[int, int]):
        self.font, self.size, self.placed = font, size, []

    def place(self, x: float, y: float, text: str) -> tuple[float, float]:
        half_w, half_h = self.font.getlength(text) / 2 + 2, self.font.size / 2 + 2
        width, height = self.size

        def box(yc: float) -> tuple[float, float, float, float]:
            xc = min(max(x, half_w), max(half_w, width - half_w))
            yc = min(max(yc, half_h), max(half_h, height - half_h))
            return xc - half_w, yc - half_h, xc + half_w, yc + half_h

        for k in (0, 1, -1, 2, -2, 3, -3):
            b = box(y + 2 * k * half_h)
            if not any(b[0] < q[2] and q[0] < b[2] and b[1] < q[3] and q[1] < b[3] for q in self.placed):
                break
        self.placed.append(b)
        return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _label_point(mask: np.ndarray) -> tuple[int, int] | None:
    """A pixel of ``mask`` nearest to its centroid (x, y); None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    j = np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2)
    return int(xs[j]), int(ys[j])


def _box_regions(boxes: np.ndarray, n: int) -> np.ndarray:
    """Validated float ``[N, 4]`` xyxy boxes."""
    boxes = _numpy(boxes).astype(np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if len(boxes) != n:
        raise ValueError(f"boxes must be [N, 4] with N = {n} labels, got {boxes.shape}")
    return boxes


def _draw_boxes(draw: ImageDraw.ImageDraw, boxes: np.ndarray, scale: int, width: int) -> None:
    """Box outlines (``width`` px) in the palette colours."""
    for i, (x1, y1, x2, y2) in enumerate(boxes * scale):
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=width)


def render_scene_graph(
    image: np.ndarray,
    masks: np.ndarray | None,
    labels: Sequence[int],
    triplets: np.ndarray,
    object_names: Sequence[str],
    predicate_names: Sequence[str],
    top_k: int = 5,
    title: str | None = None,
    hits: Sequence[bool] | None = None,
    min_size: int = 256,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """One image with its segments (or boxes) and top triplets.

    Args:
        image: uint8 ``[H, W, 3]``.
        masks: bool ``[N, H, W]`` (None with ``boxes``); labels: ``[N]`` class ids into ``object_names``.
        triplets: ``[T, 4]`` (subject, object, predicate, score) or ``[T, 3]``, ranked; the first ``top_k``
            are listed as ``"1. red ball — left of — blue box (0.83)"``.
        title: first line of the text panel.
        hits: optional per listed triplet flag; flagged lines are drawn green (e.g. matched to GT).
        min_size: small images are upscaled (nearest, integer factor) to this short side.
        boxes: float ``[N, 4]`` xyxy pixels (VG) drawn in place of masks.

    Returns:
        uint8 ``[H', W', 3]``: the (upscaled) image with each mask's (or box's) outline in its palette colour
        (outlines, not tints: a tint would repaint objects whose class names are colours), its name (``#k``
        for a repeated class, :func:`display_names`) near its centre in that colour, names moved apart where
        they would overlap, and a white text panel on its right; text scales with the picture
        (:func:`font_size`); ``H' >= s*H``, ``W' > s*W`` (``s`` the upscale factor).
    """
    image, labels, triplets = _numpy(image), _numpy(labels).reshape(-1).astype(np.int64), _numpy(triplets)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if boxes is not None:
        boxes = _box_regions(boxes, len(labels))
        masks = np.zeros((0, *image.shape[:2]), dtype=bool)
    masks = _numpy(masks).astype(bool)
    if boxes is None and (masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or len(labels) != len(masks)):
        raise ValueError(
            f"masks must be bool [N, {image.shape[0]}, {image.shape[1]}] with N labels, "
            f"got masks {masks.shape} and {len(labels)} labels"
        )
    triplets = triplets.reshape(-1, triplets.shape[-1] if triplets.size else 3)[:top_k]
    scale = upscale_factor(image, min_size)
    canvas = np.repeat(np.repeat(image, scale, 0), scale, 1)
    size = font_size(canvas.shape)
    line = max(2, size // 6)  # outline width in canvas pixels
    if len(masks):
        big = np.repeat(np.repeat(masks, scale, 1), scale, 2)
        for i, edge in enumerate(mask_outlines(big, line)):
            canvas[edge] = PALETTE[i % len(PALETTE)]
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = _font(size)
    names = display_names(labels, object_names)
    if boxes is not None:
        _draw_boxes(draw, boxes, scale, line)
        anchors = [((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in boxes]
    else:
        anchors = [_label_point(m) for m in masks]
    placer = _LabelPlacer(font, (canvas.shape[1], canvas.shape[0]))
    for i, point in enumerate(anchors):
        if point is not None:  # near the region's centre, kept inside the picture and off other names
            x, y = placer.place(point[0] * scale + scale / 2, point[1] * scale + scale / 2, names[i])
            colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
            draw.text((x, y), names[i], font=font, fill=(255, 255, 255), anchor="mm", stroke_width=max(2, size // 8),
                      stroke_fill=colour)

    lines: list[tuple[str, tuple[int, int, int]]] = [(title, TEXT)] if title else []
    for r, row in enumerate(triplets):
        s, o, p = (int(v) for v in row[:3])
        text = f"{r + 1}. {names[s]} — {predicate_names[p]} — {names[o]}"
        if len(row) > 3:
            text += f" ({float(row[3]):.2f})"
        lines.append((text, HIT if hits is not None and hits[r] else TEXT))
    if not triplets.size:
        lines.append(("(no triplets)", TEXT))
    line_h, pad = int(font.size * 1.5), max(8, size // 2)
    panel_w = int(max(font.getlength(t) for t, _ in lines)) + 2 * pad
    height = max(canvas.shape[0], len(lines) * line_h + 2 * pad)
    out = Image.new("RGB", (canvas.shape[1] + panel_w, height), BACKGROUND)
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for j, (text, colour) in enumerate(lines):
        draw.text((canvas.shape[1] + pad, pad + j * line_h), text, font=font, fill=colour)
    return np.asarray(out)


def _hstack(panels: Sequence[np.ndarray], gap: int = 12) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        out[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def render_comparison(
    image: np.ndarray,
    gt: dict,
    pred: dict | None,
    object_names: Sequence[str],
    predicate_names: Sequence[str],
    top_k: int = 5,
    iou_thr: float = 0.5,
    title: str | None = None,
) -> np.ndarray:
    """The image as it is, then the ground truth (``masks`` or ``boxes``, ``labels``, ``relations`` ``[R, 3]``),
    then a prediction (the same region kind, ``labels``, ranked ``triplets`` ``[T, 4]``; None = no prediction),
    side by side in one uint8 ``[H', W', 3]`` array.

    Predicted lines that match a GT triplet (PSG rule, :func:`spade_core.eval.match_image`; VG rule,
    :func:`spade_core.eval.vg.match_image`, for boxes) are green, and so are the GT lines recalled by the listed
    predictions.
    """
    from spade_core.eval import match_image, vg

    kind = "boxes" if is_box_ground_truth(gt) else "masks"
    match = vg.match_image if kind == "boxes" else match_image
    gt_rel = _numpy(gt["relations"]).reshape(-1, 3).astype(np.int64)
    gt_rel = gt_rel[np.sort(np.unique(gt_rel, axis=0, return_index=True)[1])] if len(gt_rel) else gt_rel
    gt_regions, gt_labels = _numpy(gt[kind]), _numpy(gt["labels"]).reshape(-1).astype(np.int64)

    def regions(value: np.ndarray) -> dict:
        return {"masks": None, "boxes": value} if kind == "boxes" else {"masks": value.astype(bool)}

    gt_hits = np.zeros(len(gt_rel), dtype=bool)
    prefix = f"{title}: " if title else ""
    panels = []
    if pred is None or len(pred["triplets"]) == 0:
        empty = np.zeros((0, 4)) if kind == "boxes" else np.zeros((0, *image.shape[:2]), bool)
        pred_panel = render_scene_graph(
            image, labels=[], triplets=np.zeros((0, 4)), object_names=object_names, predicate_names=predicate_names,
            top_k=top_k, title=f"{prefix}prediction (none)", **regions(empty),
        )  # fmt: skip
    else:
        pred_regions = _numpy(pred[kind])
        labels = _numpy(pred["labels"]).reshape(-1).astype(np.int64)
        rows = _numpy(pred["triplets"])[:top_k]
        pred_hits = []
        for r in range(len(rows)):
            row = rows[r : r + 1, :3].astype(np.int64)
            first = (
                match(gt_regions, gt_labels, gt_rel, pred_regions, labels, row, iou_thr)
                if len(gt_rel)
                else np.zeros(0, np.int64)
            )
            pred_hits.append(bool((first >= 0).any()))
            gt_hits |= first >= 0
        pred_panel = render_scene_graph(
            image, labels=labels, triplets=rows, object_names=object_names, predicate_names=predicate_names,
            top_k=top_k, title=f"{prefix}prediction", hits=pred_hits, **regions(pred_regions),
        )  # fmt: skip
    scale = upscale_factor(image, 256)
    photo = np.repeat(np.repeat(_numpy(image), scale, 0), scale, 1)  # the image itself, untouched, first
    gt_panel = render_scene_graph(
        image, labels=gt_labels, triplets=gt_rel, object_names=object_names, predicate_names=predicate_names,
        top_k=top_k, title=f"{prefix}ground truth", hits=gt_hits[:top_k], **regions(gt_regions),
    )  # fmt: skip
    panels += [photo, gt_panel, pred_panel]
    return _hstack(panels)


def save_png(array: np.ndarray, path: Path | str) -> None:
    """Write a uint8 ``[H, W, 3]`` array as PNG, atomically (temporary file + rename)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig: Any, path: Path | str) -> Path:
    """Lay out a matplotlib ``Figure`` and write it as PNG, atomically (temporary file + rename)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def plot_per_predicate_recall(per_predicate: Sequence[dict[str, Any]], k: int, path: Path | str) -> None:
    """Horizontal bar chart of ``recall@k`` per predicate (``n`` = evaluated images containing it), as PNG."""
    from matplotlib.figure import Figure

    names = [r["name"] for r in per_predicate]
    values = [100.0 * r[f"recall@{k}"] for r in per_predicate]
    fig = Figure(figsize=(7, 1.0 + 0.28 * max(1, len(names))), dpi=100)
    ax = fig.add_subplot()
    bars = ax.barh(range(len(names)), values, color="#3c78b4")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"R@{k} (%)")
    ax.set_title(f"Per-predicate recall R@{k}")
    for bar, row in zip(bars, per_predicate):
        ax.text(
            bar.get_width() + 1,
            bar.get_y() + bar.get_height() / 2,
            f"{100 * row[f'recall@{k}']:.1f} (n={row['num_images']})",
            va="center",
            fontsize=7,
        )
    save_figure(fig, path)
