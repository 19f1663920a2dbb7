"""Masks of the object to replace (`siso.vision.masks`): files, boxes, dilation, and cleaning."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siso.vision.masks import MaskError, box_mask, clean_mask, dilate, load_mask

SIZE = (40, 30)  # (width, height) of the scene photo


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image if mode is None else image.convert(mode)).save(path)
    return path


def rectangle(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "RGBA", "P"])
def test_load_mask_reads_white_as_object_in_any_mode(mode, tmp_path):
    expected = rectangle(*SIZE, 10, 5, 30, 20)
    mask = load_mask(save(expected.astype(np.uint8) * 255, tmp_path / "m.png", mode), SIZE)
    assert mask.dtype == bool and np.array_equal(mask, expected)


def test_load_mask_thresholds_16_bit_and_jpeg_at_half_range(tmp_path):
    levels = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint16)
    levels[5:20, 10:30] = 40000  # above half of 65535
    levels[0, 0] = 200  # dark in 16 bits, though Pillow's clipping conversion to 8 bits would make it light
    path = save(levels, tmp_path / "m16.png")
    assert Image.open(path).mode == "I;16"
    assert np.array_equal(load_mask(path, SIZE), rectangle(*SIZE, 10, 5, 30, 20))
    jpeg = save(rectangle(*SIZE, 10, 5, 30, 20).astype(np.uint8) * 255, tmp_path / "m.jpg")
    assert np.array_equal(load_mask(jpeg, SIZE), rectangle(*SIZE, 10, 5, 30, 20))


def test_load_mask_resizes_a_mask_of_the_same_aspect(tmp_path):
    big = rectangle(80, 60, 20, 10, 60, 40)  # twice the scene's size
    mask = load_mask(save(big.astype(np.uint8) * 255, tmp_path / "m.png"), SIZE)
    # Nearest neighbour halving samples source pixel 2i + 1: columns 20..59 -> 10..29, rows 10..39 -> 5..19.
    assert np.array_equal(mask, rectangle(*SIZE, 10, 5, 30, 20))
    slightly_off = rectangle(81, 61, 20, 10, 60, 40)  # 0.4 % wider in ratio: still the photo's shape
    assert load_mask(save(slightly_off.astype(np.uint8) * 255, tmp_path / "n.png"), SIZE).shape == (30, 40)


def test_load_mask_errors(tmp_path):
    with pytest.raises(MaskError, match="not found"):
        load_mask(tmp_path / "missing.png", SIZE)
    with pytest.raises(MaskError, match="covers no pixel"):
        load_mask(save(np.zeros((30, 40), np.uint8), tmp_path / "empty.png"), SIZE)
    with pytest.raises(MaskError, match="covers every pixel"):
        load_mask(save(np.full((30, 40), 255, np.uint8), tmp_path / "full.png"), SIZE)
    with pytest.raises(MaskError, match="is 60x60 but the photo is 40x30: their aspect ratios differ"):
        load_mask(save(rectangle(60, 60, 0, 0, 9, 9).astype(np.uint8) * 255, tmp_path / "square.png"), SIZE)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(MaskError, match="cannot read mask"):
        load_mask(tmp_path / "text.png", SIZE)
    good = save(rectangle(*SIZE, 10, 5, 30, 20).astype(np.uint8) * 255, tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(MaskError, match="cannot read mask"):
        load_mask(tmp_path / "cut.png", SIZE)


def test_box_mask_covers_every_pixel_the_box_touches():
    assert np.array_equal(box_mask("10,5,30,20", SIZE), rectangle(*SIZE, 10, 5, 30, 20))
    assert np.array_equal(box_mask(" 10, 5 ,30,20", SIZE), box_mask((10, 5, 30.0, 20), SIZE))
    assert np.array_equal(box_mask("10.5,5,29.2,20", SIZE), rectangle(*SIZE, 10, 5, 30, 20))
    assert np.array_equal(box_mask([0, 0, 40, 29], SIZE), rectangle(*SIZE, 0, 0, 40, 29))  # edges are allowed


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ("1,2,3", "is not 4 numbers"),
        ("1,2,3,4,5", "is not 4 numbers"),
        ("a,b,c,d", "is not 4 numbers"),
        ([1, 2, 3], "is not 4 numbers"),
        ("nan,2,3,4", "non-finite"),
        ((1, 2, float("inf"), 4), "non-finite"),
        ("10,5,10,20", "is empty"),
        ("10,20,30,5", "is empty"),
        ("-1,5,30,20", "outside the 40x30 photo"),
        ("10,5,41,20", "outside the 40x30 photo"),
        ("10,5,30,30.5", "outside the 40x30 photo"),
        ("0,0,40,30", "covers every pixel"),
        ("0.5,0.5,39.5,29.5", "covers every pixel"),
    ],
)
def test_box_mask_errors(box, message):
    with pytest.raises(MaskError, match=message):
        box_mask(box, SIZE)


def test_dilate_grows_by_a_disk_of_the_radius():
    point = np.zeros((21, 21), dtype=bool)
    point[10, 10] = True
    yy, xx = np.mgrid[0:21, 0:21]
    for radius in (1, 3, 6):
        assert np.array_equal(dilate(point, radius), (yy - 10) ** 2 + (xx - 10) ** 2 <= radius**2)
    assert dilate(point, 3).sum() == 29  # lattice points within distance 3
    assert np.array_equal(dilate(point, 0), point)
    corner = np.zeros((5, 6), dtype=bool)
    corner[0, 0] = True
    assert np.array_equal(dilate(corner, 2), yy[:5, :6] ** 2 + xx[:5, :6] ** 2 <= 4)  # clipped at the border
    with pytest.raises(ValueError, match="0 or more pixels"):
        dilate(point, -1)


def test_clean_mask_keeps_the_largest_region_and_fills_its_holes():
    mask = np.zeros((12, 16), dtype=bool)
    mask[1:9, 1:9] = True
    mask[3:6, 3:6] = False  # a hole in the big region
    mask[10:12, 12:16] = True  # a smaller, separate region
    mask[0, 15] = True
    expected = np.zeros_like(mask)
    expected[1:9, 1:9] = True
    assert np.array_equal(clean_mask(mask), expected)
    open_notch = expected.copy()
    open_notch[1:4, 4] = False  # a notch that reaches the region's edge is not a hole
    assert np.array_equal(clean_mask(open_notch), open_notch)
    assert not clean_mask(np.zeros((4, 4), dtype=bool)).any()
