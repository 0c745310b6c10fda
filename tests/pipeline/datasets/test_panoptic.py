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


def test_read_image_scales_16_bit_grey_instead_of_clipping(tmp_path):
    grey = np.array([[0, 257, 32896], [65535, 1000, 40000]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # PIL's convert("RGB") would clip this to 0 / 255
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[0, 1, 128], [255, 4, 156]])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_read_image_applies_exif_orientation_only_when_asked(tmp_path):
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # a marked corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    assert read_image(tmp_path / "photo.png").shape == (2, 4, 3)  # dataset images: the stored grid
    shown = read_image(tmp_path / "photo.png", exif_orientation=True)
    assert shown.shape == (4, 2, 3) and shown[0, -1, 0] == 255  # top-left corner moved to the top right
