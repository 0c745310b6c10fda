"""Scene-graph rendering, GT/prediction comparison, PNG writing and the per-predicate bar chart."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.visualise import (
    HIT,
    PALETTE,
    _font,
    _LabelPlacer,
    display_names,
    font_size,
    plot_per_predicate_recall,
    render_comparison,
    render_scene_graph,
    save_png,
)

OBJECTS = ["red ball", "blue box", "green triangle"]
PREDICATES = ["left of", "right of", "above"]


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 60), dtype=bool)
    masks[0, 2:38, 2:20] = True  # label text near row 20, far from row 3
    masks[1, 10:30, 35:55] = True
    return image, masks, np.array([0, 1])


def test_render_size_and_image_region(scene):
    image, masks, labels = scene
    out = render_scene_graph(image, masks[:0], labels[:0], np.zeros((0, 4)), OBJECTS, PREDICATES, min_size=1)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= 40 and out.shape[1] > 60  # text panel on the right
    np.testing.assert_array_equal(out[:40, :60], image)  # no masks: the picture is the input


def test_masks_coloured_and_deterministic(scene):
    image, masks, labels = scene
    trip = np.array([[0, 1, 0, 0.83], [1, 0, 1, 0.5]])
    a = render_scene_graph(image, masks, labels, trip, OBJECTS, PREDICATES, title="pred", min_size=1)
    b = render_scene_graph(image, masks, labels, trip, OBJECTS, PREDICATES, title="pred", min_size=1)
    np.testing.assert_array_equal(a, b)
    # mask 0 covers rows 2-37, cols 2-19: its boundary takes the palette colour, its inside keeps the image's
    np.testing.assert_array_equal(a[32, 2], PALETTE[0])  # left edge, below the names
    np.testing.assert_array_equal(a[30, 10], image[30, 10])  # no tint: an object keeps its own colour
    np.testing.assert_array_equal(a[39, 30], image[39, 30])  # outside every mask


def test_repeated_classes_get_instance_numbers_and_names_do_not_overlap(scene):
    image, masks, _ = scene
    assert display_names([0, 1, 0, 2], OBJECTS) == ["red ball #1", "blue box", "red ball #2", "green triangle"]
    same = np.stack([masks[1], masks[1]])  # two instances at the same place: their names must not collide
    out = render_scene_graph(image, same, np.array([1, 1]), np.array([[0, 1, 0, 0.5]]), OBJECTS, PREDICATES)
    assert out.shape[0] >= 256
    font = _font(font_size((256, 384)))
    placer = _LabelPlacer(font, (384, 256))
    a, b = placer.place(100, 100, "blue box #1"), placer.place(100, 100, "blue box #2")
    assert abs(a[1] - b[1]) >= font.size  # the second name moved a line away
    assert font_size((3000, 2000)) >= 40 and font_size((40, 60)) == 11  # readable on a large photo


def test_upscale_and_top_k(scene):
    image, masks, labels = scene
    trip = np.array([[0, 1, p % 3, 1.0] for p in range(30)])
    few = render_scene_graph(image, masks, labels, trip, OBJECTS, PREDICATES, top_k=2)
    many = render_scene_graph(image, masks, labels, trip, OBJECTS, PREDICATES, top_k=30)
    assert few.shape[0] == 40 * 7  # short side 40 -> factor ceil(256/40) = 7
    assert many.shape[0] > few.shape[0]  # 30 text lines need more height than the picture
    trip3 = trip[:, :3].astype(int)  # [T, 3] (no score) is accepted
    assert render_scene_graph(image, masks, labels, trip3, OBJECTS, PREDICATES).shape[1] > 60 * 7


def test_bad_inputs(scene):
    image, masks, labels = scene
    with pytest.raises(ValueError, match="image"):
        render_scene_graph(image.astype(np.float32), masks, labels, np.zeros((0, 4)), OBJECTS, PREDICATES)
    with pytest.raises(ValueError, match="masks"):
        render_scene_graph(image, masks[:, :10], labels, np.zeros((0, 4)), OBJECTS, PREDICATES)


def test_comparison_side_by_side_and_save(scene, tmp_path):
    image, masks, labels = scene
    gt = {"masks": masks, "labels": labels, "relations": np.array([[0, 1, 0], [0, 1, 0], [1, 0, 1]])}
    pred = {"masks": masks, "labels": labels, "triplets": np.array([[0, 1, 0, 0.9], [0, 1, 2, 0.8]])}
    single = render_scene_graph(image, masks, labels, gt["relations"], OBJECTS, PREDICATES)
    both = render_comparison(image, gt, pred, OBJECTS, PREDICATES, title="img 0")
    assert both.shape[0] >= single.shape[0] and both.shape[1] > 2 * 60 * 7
    none = render_comparison(image, gt, None, OBJECTS, PREDICATES)
    assert none.dtype == np.uint8 and none.shape[1] > single.shape[1]
    path = tmp_path / "vis" / "0.png"
    save_png(both, path)
    with Image.open(path) as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), both)
    assert not list(tmp_path.rglob("*.tmp"))


def test_plot_per_predicate_recall(tmp_path):
    rows = [{"predicate": i, "name": n, "recall@50": r, "num_images": 3} for i, (n, r) in
            enumerate(zip(PREDICATES, [0.0, 0.5, 1.0]))]
    plot_per_predicate_recall(rows, 50, tmp_path / "pp.png")
    with Image.open(tmp_path / "pp.png") as im:
        assert im.format == "PNG" and im.size[0] == 700


def test_boxes_are_drawn_as_outlines_and_matched_with_the_vg_rule(scene):
    _, _, labels = scene
    image = np.random.default_rng(1).integers(0, 256, size=(80, 120, 3), dtype=np.uint8)
    boxes = np.array([[2, 2, 40, 78], [60, 10, 110, 70]], dtype=np.float64)
    out = render_scene_graph(image, None, labels, np.zeros((0, 4)), OBJECTS, PREDICATES, min_size=1, boxes=boxes)
    np.testing.assert_array_equal(out[60, 60], PALETTE[1])  # left edge of box 1 at x = 60
    np.testing.assert_array_equal(out[60, 85], image[60, 85])  # its inside (below the name) is not tinted
    with pytest.raises(ValueError, match="boxes"):
        render_scene_graph(image, None, labels, np.zeros((0, 4)), OBJECTS, PREDICATES, boxes=boxes[:1])
    gt = {"boxes": boxes, "labels": labels, "relations": np.array([[0, 1, 0]])}
    hit = {"boxes": boxes, "labels": labels, "triplets": np.array([[0, 1, 0, 0.9]])}
    miss = {"boxes": boxes[::-1].copy(), "labels": labels, "triplets": np.array([[0, 1, 0, 0.9]])}
    a = render_comparison(image, gt, hit, OBJECTS, PREDICATES)
    b = render_comparison(image, gt, miss, OBJECTS, PREDICATES)
    green = [int((x == HIT).all(-1).sum()) for x in (a, b)]
    assert green[0] > 0 and green[1] == 0  # the swapped boxes match no GT triplet: no green line
