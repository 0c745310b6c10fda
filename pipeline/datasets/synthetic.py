"""The embedded synthetic PSG-format dataset: simple scenes whose relations are exactly known from geometry.

A scene (``image_size`` square, 128 by default) has 2-3 textured stuff bands with wavy boundaries, from one
of :data:`LAYOUTS` (sky over grass, wall over floor, ...), and ``min_objects``..``max_objects`` things drawn
back to front. Each thing class is one shape in one colour (``red ball``, ``blue box``, ...; see
:data:`THING_STYLES`), with shading, noise and a dark outline, at least ``max(8, 0.11 * size)`` pixels across.
Things are placed freely (on the ground or floating), on top of an earlier thing (dropped until they touch),
beside one (same ground line, a 0-2 px gap), partly in front of one, or inside a larger one; a placement that
would leave any earlier segment with too little visible area is redrawn (so the panoptic map never holds
slivers). Relations come from the visible masks by the rules of :mod:`pipeline.datasets.spatial`.

Determinism: image ``i`` of split ``k`` (train 0, test 1) draws from ``SeedSequence([seed, k, i])``, so the
same seed gives byte-identical files, and an image does not depend on how many images are generated.
Output layout (``out_dir``): ``psg.json``, ``train/<id>.png``, ``test/<id>.png``, ``panoptic_train/<id>.png``,
``panoptic_test/<id>.png``; ``file_name`` / ``pan_seg_file_name`` are relative to ``out_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.datasets.classes import load_class_lists
from pipeline.datasets.drawing import paint_thing, render_shape, stuff_texture, translate, wavy_bands
from pipeline.datasets.panoptic import write_panoptic_png, write_png
from pipeline.datasets.spatial import mask_box, scene_relations

THING_STYLES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red ball": ("circle", (220, 40, 40)),
    "blue box": ("square", (40, 80, 220)),
    "green triangle": ("triangle", (30, 185, 60)),
    "yellow star": ("star", (245, 215, 30)),
    "orange diamond": ("diamond", (250, 140, 20)),
    "purple cross": ("cross", (150, 55, 200)),
    "cyan hexagon": ("hexagon", (30, 205, 215)),
    "white moon": ("moon", (245, 245, 245)),
    "pink heart": ("heart", (245, 110, 180)),
    "black ring": ("ring", (30, 30, 30)),
}
NOISE = {"grass": 12.0, "sand": 14.0}
STUFF_PREDICATE = {"sky": "in", "wall": "in front of", "grass": "on", "floor": "on", "water": "in", "sand": "on"}
LAYOUTS = (
    ("sky", "grass"),
    ("sky", "water"),
    ("sky", "sand"),
    ("wall", "floor"),
    ("sky", "grass", "water"),
    ("sky", "water", "sand"),
)
CONTAINERS = ("circle", "square", "hexagon", "diamond", "heart")
MODES = ("free", "on", "beside", "front", "inside")
MODE_PROBS = (0.25, 0.2, 0.15, 0.2, 0.2)
MAX_RELATIONS = 32
MAX_ATTEMPTS = 10


@dataclass
class Scene:
    """One generated scene: image ``[H, W, 3]`` uint8, id map ``[H, W]`` int64, psg.json-style segments."""

    image: np.ndarray
    id_map: np.ndarray
    segments_info: list[dict]
    annotations: list[dict]
    relations: list[list[int]]


def segment_id(k: int) -> int:
    """Panoptic id of the ``k``-th segment: a bijection on ``[0, 2**24)`` that spreads colours, never 0."""
    return ((k + 1) * 2654435761) % 2**24


class _Canvas:
    """Scene under construction: segments back to front with amodal masks and a visible id map."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.min_d, self.max_d = max(8, round(0.11 * size)), max(9, round(0.34 * size))
        self.ids = np.zeros((size, size), dtype=np.int64)
        self.image = np.zeros((size, size, 3))
        self.names: list[str] = []
        self.masks: list[np.ndarray] = []  # amodal
        self.diameters: list[int] = []
        self.hidden: list[tuple[int, int]] = []  # (front, back) pairs where front hid >= threshold of back

    def visible(self, k: int) -> np.ndarray:
        return self.ids == segment_id(k)

    def add(self, name: str, mask: np.ndarray, diameter: int = 0) -> None:
        k = len(self.names)
        for b in range(k):
            if name in THING_STYLES and self.names[b] in THING_STYLES:
                lost = int(np.count_nonzero(mask & self.visible(b)))
                if lost >= max(4, 0.05 * min(mask.sum(), self.masks[b].sum())):
                    self.hidden.append((k, b))
        self.ids[mask] = segment_id(k)
        if name in THING_STYLES:
            paint_thing(self.image, THING_STYLES[name][1], mask)
        else:
            self.image[mask] = stuff_texture(name, self.size, self.rng)[mask]
        self.names.append(name)
        self.masks.append(mask)
        self.diameters.append(diameter)

    def keeps_visibility(self, mask: np.ndarray) -> bool:
        for k, name in enumerate(self.names):
            vis = np.count_nonzero(self.visible(k) & ~mask)
            frac, floor = (0.45, (self.min_d // 2) ** 2) if name in THING_STYLES else (0.2, self.min_d**2)
            if vis < max(frac * self.masks[k].sum(), floor):
                return False
        return True

    def things(self) -> list[int]:
        return [k for k, n in enumerate(self.names) if n in THING_STYLES]


def _place(cv: _Canvas, shape: str, d: int, mode: str, ground_top: int) -> np.ndarray | None:
    """One placement attempt of a thing in ``mode``; the amodal mask or None."""
    rng, size = cv.rng, cv.size
    m0, c = render_shape(shape, d, size), size // 2
    x0, y0, x1, y1 = (int(v) for v in mask_box(m0) - np.array([0, 0, 1, 1]))  # inclusive extent
    things = cv.things()
    if mode == "inside":  # containers only: large things of a convex-ish shape
        things = [a for a in things if THING_STYLES[cv.names[a]][0] in CONTAINERS and cv.diameters[a] >= 2 * cv.min_d]
    if mode == "free" or not things:
        x = rng.integers(0, size - (x1 - x0))
        if rng.random() < 0.7 and ground_top + 2 < size - 1:
            bottom = rng.integers(ground_top + 2, size)
            return translate(m0, bottom - y1, x - x0)
        return translate(m0, rng.integers(0, size - (y1 - y0)) - y0, x - x0)
    a = things[int(rng.integers(len(things)))]
    va = cv.visible(a)
    if not va.any():
        return None
    box = mask_box(va).astype(int)
    if mode == "on":
        cx = (box[0] + box[2]) / 2 + rng.uniform(-0.25, 0.25) * (box[2] - box[0])
        m = translate(m0, -y0, round(cx) - c)
        if m is None:
            return None
        cols = np.nonzero(m.any(0) & va.any(0))[0]
        if len(cols) == 0:
            return None
        bottom = m.shape[0] - 1 - np.argmax(m[::-1, cols], axis=0)
        top = np.argmax(va[:, cols], axis=0)
        if np.any(top <= bottom):
            return None
        return translate(m, int(np.min(top - bottom - 1)), 0)
    if mode == "beside":
        gap = int(rng.integers(0, 3))
        dx = box[2] + gap - x0 if rng.random() < 0.5 else box[0] - gap - 1 - x1
        return translate(m0, box[3] - 1 - y1, dx)
    if mode == "front":
        theta, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.45, 0.75) * (cv.diameters[a] + d) / 2
        cy, cx = (box[1] + box[3]) / 2 + dist * np.sin(theta), (box[0] + box[2]) / 2 + dist * np.cos(theta)
        return translate(m0, round(cy) - c, round(cx) - c)
    # inside: a small thing centred in a large container thing
    inner = render_shape(shape, int(rng.integers(cv.min_d, cv.diameters[a] // 2 + 1)), size)
    ys, xs = np.nonzero(va)
    jitter = rng.uniform(-0.05, 0.05, 2) * cv.diameters[a]
    return translate(inner, round(ys.mean() + jitter[0]) - c, round(xs.mean() + jitter[1]) - c)


def generate_scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int) -> Scene:
    """Draw one scene (see module doc) with ``min_objects..max_objects`` things."""
    classes = load_class_lists("synthetic")
    cv = _Canvas(image_size, rng)
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    bands = wavy_bands(layout, image_size, rng)
    for name, band in zip(layout, bands):
        cv.add(name, band)
    ground_top = int(np.nonzero(bands[0].any(1))[0].max())
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        name = classes.thing_classes[int(rng.integers(classes.num_things))]
        shape = THING_STYLES[name][0]
        for _attempt in range(MAX_ATTEMPTS):
            d = int(rng.integers(cv.min_d, cv.max_d + 1))
            mode = MODES[int(rng.choice(len(MODES), p=MODE_PROBS))]
            mask = _place(cv, shape, d, mode, ground_top)
            if mask is not None and cv.keeps_visibility(mask):
                cv.add(name, mask, d)
                break
    keep = [k for k in range(len(cv.names)) if cv.visible(k).any()]
    ids = [segment_id(k) for k in keep]
    occludes = np.zeros((len(keep), len(keep)), dtype=bool)
    for f, b in cv.hidden:
        if f in keep and b in keep:
            occludes[keep.index(f), keep.index(b)] = True
    names = [cv.names[k] for k in keep]
    isthing = [n in THING_STYLES for n in names]
    stuff_pred = [None if t else STUFF_PREDICATE[n] for n, t in zip(names, isthing)]
    triples = scene_relations(cv.ids, ids, isthing, stuff_pred, occludes, rng)
    if len(triples) > MAX_RELATIONS:
        triples = [triples[i] for i in np.sort(rng.choice(len(triples), MAX_RELATIONS, replace=False))]
    segments, annotations = [], []
    for sid, name, thing in zip(ids, names, isthing):
        mask, cat = cv.ids == sid, classes.object_classes.index(name)
        segments.append({"id": sid, "category_id": cat, "iscrowd": 0, "isthing": int(thing), "area": int(mask.sum())})
        annotations.append({"bbox": [int(v) for v in mask_box(mask)], "bbox_mode": 0, "category_id": cat})
    relations = [[s, o, classes.predicate_classes.index(p)] for s, o, p in triples]
    sigma = np.full(cv.ids.shape, 7.0)  # pixel noise: things 7, grass 12, sand 14, other stuff 5
    for sid, name in zip(ids, names):
        if name not in THING_STYLES:
            sigma[cv.ids == sid] = NOISE.get(name, 5.0)
    noisy = cv.image + rng.standard_normal(cv.image.shape, dtype=np.float32) * sigma[..., None]
    image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return Scene(image, cv.ids.copy(), segments, annotations, relations)


def generate_dataset(
    out_dir: str | Path,
    seed: int,
    num_train: int,
    num_test: int,
    image_size: int = 128,
    min_objects: int = 2,
    max_objects: int = 5,
    image_format: str = "png",
    progress: bool = True,
) -> Path:
    """Write the dataset (layout in the module doc) under ``out_dir``; returns the path of its psg.json."""
    if image_format != "png":
        raise ValueError(f"image_format must be 'png', got {image_format!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    out_dir = Path(out_dir)
    classes = load_class_lists("synthetic")
    records, test_ids = [], []
    jobs = [("train", 0, i) for i in range(num_train)] + [("test", 1, i) for i in range(num_test)]
    for split, k, i in tqdm(jobs, desc="generate synthetic", disable=not progress):
        scene = generate_scene(np.random.default_rng([seed, k, i]), image_size, min_objects, max_objects)
        image_id = str((k + 1) * 1_000_000 + i)
        file_name, pan_name = f"{split}/{image_id}.png", f"panoptic_{split}/{image_id}.png"
        write_png(out_dir / file_name, scene.image)
        write_panoptic_png(out_dir / pan_name, scene.id_map)
        records.append(
            {
                "file_name": file_name,
                "pan_seg_file_name": pan_name,
                "height": image_size,
                "width": image_size,
                "image_id": image_id,
                "coco_image_id": image_id,
                "segments_info": scene.segments_info,
                "annotations": scene.annotations,
                "relations": scene.relations,
            }
        )
        if split == "test":
            test_ids.append(image_id)
    psg = {
        "thing_classes": list(classes.thing_classes),
        "stuff_classes": list(classes.stuff_classes),
        "predicate_classes": list(classes.predicate_classes),
        "test_image_ids": test_ids,
        "data": records,
    }
    path = out_dir / "psg.json"
    path.write_text(json.dumps(psg), encoding="utf-8")
    return path


def generation_args(prepare: Any) -> dict[str, Any]:
    """The generator arguments (:func:`generate_dataset`, ``synthetic_vg.generate_vg_dataset``) of the
    ``prepare`` params: ``prepare.seed`` and the ``prepare.synthetic`` section."""
    syn = prepare.synthetic
    return {"seed": prepare.seed, "num_train": syn.num_train, "num_test": syn.num_test,
            "image_size": syn.image_size, "min_objects": syn.min_objects, "max_objects": syn.max_objects,
            "image_format": syn.image_format}
