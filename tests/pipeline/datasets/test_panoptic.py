import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.panoptic import (
    id2rgb,
    masks_from_ids,
    read_image,
    read_panoptic_png,
    rgb2id,
    write_panoptic_png,
    write_png,
)


def test_rgb2id_matches_coco_formula():
    rgb = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(rgb2id(rgb), [[1, 256], [65536, 256**3 - 1]])


def test_id2rgb_rgb2id_round_trip():
    ids = np.random.default_rng(0).integers(0, 256**3, size=(7, 9))
    ids[0, 0] = 0
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)


def test_png_round_trip_and_masks(tmp_path):
    ids = np.zeros((5, 6), dtype=np.int64)
    ids[1:3, 1:4] = 4242424
    ids[4, :] = 300
    write_panoptic_png(tmp_path / "p.png", ids)
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "RGB" and im.size == (6, 5)
    back = read_panoptic_png(tmp_path / "p.png")
    np.testing.assert_array_equal(back, ids)
    masks = masks_from_ids(back, [300, 4242424, 7])
    assert masks.shape == (3, 5, 6) and masks.dtype == bool
    assert masks[0].sum() == 6 and masks[1].sum() == 6 and not masks[2].any()


def test_png_writing_is_deterministic(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    write_png(tmp_path / "b.png", img)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="ids must lie"):
        id2rgb(np.array([[256**3]]))
    with pytest.raises(ValueError, match="uint8"):
        rgb2id(np.zeros((2, 2, 3), dtype=np.int32))


def test_non_rgb_panoptic_png_is_rejected(tmp_path):
    Image.new("RGBA", (4, 4)).save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match="8-bit RGB"):
        read_panoptic_png(tmp_path / "rgba.png")
