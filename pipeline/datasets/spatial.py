"""Geometric predicate rules of the synthetic dataset, evaluated on the *visible* masks of a scene.

Notation: ``M_s`` is the visible mask of segment ``s``, its box ``[x1, y1, x2, y2]`` has exclusive ``x2, y2``
(as in PSG), ``c_s`` is the box centre, ``W`` the image width. Segments are listed back to front (stuff
bands first, then things in drawing order). For each unordered pair of things exactly one rule fires, the
first that holds in this order:

1. ``inside(s, o)``: every 4-neighbour of ``M_s`` outside ``M_s`` belongs to ``M_o`` and ``M_s`` does not
   touch the image border (``s`` is surrounded by ``o``).
2. ``in front of(s, o)``: ``s`` was drawn over ``o`` and hid at least ``max(4, 5% of the smaller shape)``
   then-visible pixels of ``o`` (the ``occludes`` matrix), and ``M_s`` and ``M_o`` are 4-adjacent now.
3. ``on(s, o)``: some pixel of ``M_s`` lies directly above a pixel of ``M_o``, ``s.y2 <= o.y1 + 0.3 h_o``
   and ``c_s`` is above ``c_o`` (the subject is the upper one).
4. ``beside``: horizontal offset of the centres at least the vertical one, box rows overlapping by at least
   half the smaller height, and at most ``max(2, round(0.04 W))`` empty columns between the boxes
   (subject/object order drawn at random).
5. otherwise a direction, subject/object order drawn at random, ``d = c_s - c_o``: ``left of`` / ``right of``
   when ``|dx| >= |dy|`` (sign of ``dx``), else ``above`` / ``below`` (sign of ``dy``); no relation when
   ``max(|dx|, |dy|) < 0.05 W``. Such a non-touching pair also gets ``far from`` (same order) when
   ``|c_s - c_o| > W / 3`` (the DR distance of the paper's spatial analysis).

Thing-stuff: the stuff segment most frequent among the pixels directly below the thing's mask (ties: the
earlier segment) gets ``(thing, stuff, stuff_predicate[stuff])`` (e.g. on grass, in water, in front of wall).
Stuff-stuff: ``(u, l, above)`` when some pixel of ``u`` lies directly above one of ``l`` and ``c_u`` is higher.
"""

from __future__ import annotations

import numpy as np

ON_TOLERANCE = 0.3
BESIDE_GAP = 0.04
MIN_DIRECTION = 0.05
FAR = 1.0 / 3.0


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Box ``[x1, y1, x2, y2]`` (exclusive x2, y2) of a non-empty ``[H, W]`` mask, float64."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def box_centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def directly_above(a: np.ndarray, b: np.ndarray) -> bool:
    """Some pixel of ``a`` has a pixel of ``b`` right below it."""
    return bool(np.any(a[:-1] & b[1:]))


def adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` share a 4-neighbour edge."""
    return (
        directly_above(a, b)
        or directly_above(b, a)
        or bool(np.any(a[:, :-1] & b[:, 1:]))
        or bool(np.any(a[:, 1:] & b[:, :-1]))
    )


def outer_ring(mask: np.ndarray) -> np.ndarray:
    """4-neighbours of ``mask`` that are not in it."""
    ring = np.zeros_like(mask)
    ring[1:] |= mask[:-1]
    ring[:-1] |= mask[1:]
    ring[:, 1:] |= mask[:, :-1]
    ring[:, :-1] |= mask[:, 1:]
    return ring & ~mask


def touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def is_inside(s: np.ndarray, o: np.ndarray) -> bool:
    return not touches_border(s) and bool(np.all(o[outer_ring(s)]))


def is_on(s: np.ndarray, o: np.ndarray, box_s: np.ndarray, box_o: np.ndarray) -> bool:
    h_o = box_o[3] - box_o[1]
    return (
        directly_above(s, o)
        and box_s[3] <= box_o[1] + ON_TOLERANCE * h_o
        and box_centre(box_s)[1] < box_centre(box_o)[1]
    )


def is_beside(box_a: np.ndarray, box_b: np.ndarray, width: int) -> bool:
    d = box_centre(box_a) - box_centre(box_b)
    rows = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    min_h = min(box_a[3] - box_a[1], box_b[3] - box_b[1])
    gap = max(box_b[0] - box_a[2], box_a[0] - box_b[2])
    return abs(d[0]) >= abs(d[1]) and rows >= 0.5 * min_h and gap <= max(2, round(BESIDE_GAP * width))


def direction(box_s: np.ndarray, box_o: np.ndarray, width: int) -> str | None:
    dx, dy = box_centre(box_s) - box_centre(box_o)
    if max(abs(dx), abs(dy)) < MIN_DIRECTION * width:
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def is_far(box_s: np.ndarray, box_o: np.ndarray, width: int) -> bool:
    return float(np.linalg.norm(box_centre(box_s) - box_centre(box_o))) > FAR * width


def thing_pair_relations(
    masks: np.ndarray, boxes: np.ndarray, i: int, j: int, occludes: np.ndarray, rng: np.random.Generator
) -> list[tuple[int, int, str]]:
    """Relations ``(s, o, predicate name)`` of the thing pair ``i < j`` (``j`` drawn later), see module doc."""
    width = masks.shape[2]
    for s, o in ((j, i), (i, j)):
        if is_inside(masks[s], masks[o]):
            return [(s, o, "inside")]
    if occludes[j, i] and adjacent(masks[j], masks[i]):
        return [(j, i, "in front of")]
    for s, o in ((j, i), (i, j)):
        if is_on(masks[s], masks[o], boxes[s], boxes[o]):
            return [(s, o, "on")]
    s, o = (i, j) if rng.random() < 0.5 else (j, i)
    if is_beside(boxes[s], boxes[o], width):
        return [(s, o, "beside")]
    name = direction(boxes[s], boxes[o], width)
    out = [] if name is None else [(s, o, name)]
    if is_far(boxes[s], boxes[o], width):
        out.append((s, o, "far from"))
    return out


def scene_relations(
    id_map: np.ndarray,
    segment_ids: list[int],
    isthing: list[bool],
    stuff_predicate: list[str | None],
    occludes: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[int, int, str]]:
    """All relations ``(s, o, predicate name)`` of a scene (segments back to front), see module doc.

    Args:
        id_map: ``[H, W]`` visible segment ids.
        segment_ids: id per segment; ``isthing``: thing flag per segment.
        stuff_predicate: predicate a thing has with this stuff segment (None for things).
        occludes: ``[S, S]`` bool, ``occludes[a, b]``: ``a`` hid part of ``b`` when it was drawn.
    """
    masks = id_map[None] == np.asarray(segment_ids).reshape(-1, 1, 1)
    boxes = np.stack([mask_box(m) for m in masks])
    things = [k for k, t in enumerate(isthing) if t]
    stuff = [k for k, t in enumerate(isthing) if not t]
    relations: list[tuple[int, int, str]] = []
    for a, i in enumerate(things):
        for j in things[a + 1 :]:
            relations += thing_pair_relations(masks, boxes, i, j, occludes, rng)
    below_ids = id_map[1:]
    for t in things:
        below = below_ids[masks[t][:-1] & ~masks[t][1:]]
        counts = [int(np.count_nonzero(below == segment_ids[k])) for k in stuff]
        if counts and max(counts) > 0:
            g = stuff[int(np.argmax(counts))]
            relations.append((t, g, stuff_predicate[g]))
    for u in stuff:
        for low in stuff:
            if (
                u != low
                and directly_above(masks[u], masks[low])
                and boxes[u][1] + boxes[u][3] < boxes[low][1] + boxes[low][3]
            ):
                relations.append((u, low, "above"))
    return relations
