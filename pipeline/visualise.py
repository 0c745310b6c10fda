"""Pictures of scene graphs and of per-predicate recall (PIL for images, matplotlib Agg for the bar chart).

Colours are deterministic: segment ``i`` gets ``PALETTE[i % len(PALETTE)]``. Text uses matplotlib's bundled
DejaVu Sans (same glyphs on every machine), falling back to PIL's default font.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.io import atomic_write_bytes

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


def _draw_boxes(draw: ImageDraw.ImageDraw, boxes: np.ndarray, scale: int, font, names: list[str]) -> None:
    """Box outlines in the palette colours, each with its class name at its top-left corner."""
    for i, (x1, y1, x2, y2) in enumerate(boxes * scale):
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=max(2, scale))
        draw.text((x1 + 3, y1 + 2), names[i], font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=colour)


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
    alpha: float = 0.45,
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
        alpha: mask opacity. min_size: small images are upscaled (nearest, integer factor) to this short side.
        boxes: float ``[N, 4]`` xyxy pixels (VG) drawn as outlines in place of masks.

    Returns:
        uint8 ``[H', W', 3]``: the (upscaled) image with coloured masks and class names at the mask centres,
        and a white text panel on its right; ``H' >= s*H``, ``W' > s*W`` (``s`` the upscale factor).
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
    scale = max(1, -(-min_size // max(1, min(image.shape[:2]))))
    blended = image.astype(np.float64)
    for i, m in enumerate(masks):
        blended[m] = (1 - alpha) * blended[m] + alpha * PALETTE[i % len(PALETTE)]
    canvas = np.repeat(np.repeat(np.round(blended).astype(np.uint8), scale, 0), scale, 1)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = _font(max(11, min(16, canvas.shape[0] // 20)))
    for i, m in enumerate(masks):
        point = _label_point(m)
        if point is not None:  # at the mask centre, shifted to keep the name inside the picture
            name = object_names[labels[i]]
            half_w, half_h = font.getlength(name) / 2 + 2, font.size / 2 + 2
            x = min(max(point[0] * scale + scale / 2, half_w), max(half_w, canvas.shape[1] - half_w))
            y = min(max(point[1] * scale + scale / 2, half_h), max(half_h, canvas.shape[0] - half_h))
            draw.text((x, y), name, font=font, fill=(255, 255, 255), anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))
    if boxes is not None:
        _draw_boxes(draw, boxes, scale, font, [object_names[c] for c in labels])

    lines: list[tuple[str, tuple[int, int, int]]] = [(title, TEXT)] if title else []
    for r, row in enumerate(triplets):
        s, o, p = (int(v) for v in row[:3])
        text = f"{r + 1}. {object_names[labels[s]]} — {predicate_names[p]} — {object_names[labels[o]]}"
        if len(row) > 3:
            text += f" ({float(row[3]):.2f})"
        lines.append((text, HIT if hits is not None and hits[r] else TEXT))
    if not triplets.size:
        lines.append(("(no triplets)", TEXT))
    line_h, pad = int(font.size * 1.5), 8
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
    """Ground truth (``masks`` or ``boxes``, ``labels``, ``relations`` ``[R, 3]``) beside a prediction (the same
    region kind, ``labels``, ranked ``triplets`` ``[T, 4]``; None = no prediction) in one uint8 ``[H', W', 3]``
    array.

    Predicted lines that match a GT triplet (PSG rule, :func:`spade_core.eval.match_image`; VG rule,
    :func:`spade_core.eval.vg.match_image`, for boxes) are green, and so are the GT lines recalled by the listed
    predictions.
    """
    from spade_core.eval import match_image, vg

    kind = "boxes" if "boxes" in gt and "masks" not in gt else "masks"
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
    gt_panel = render_scene_graph(
        image, labels=gt_labels, triplets=gt_rel, object_names=object_names, predicate_names=predicate_names,
        top_k=top_k, title=f"{prefix}ground truth", hits=gt_hits[:top_k], **regions(gt_regions),
    )  # fmt: skip
    panels += [gt_panel, pred_panel]
    return _hstack(panels)


def save_png(array: np.ndarray, path: Path | str) -> None:
    """Write a uint8 ``[H, W, 3]`` array as PNG, atomically (temporary file + rename)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
