"""`siso.editing.scene`: the photo and mask at the model's resolution, and the composite back onto the photo."""

import numpy as np
import pytest
import torch
from PIL import Image

from siso.editing import composite, prepare_scene
from siso.vision.masks import MaskError

from .helpers import _box


def test_scene_keeps_the_whole_non_square_photo(scene_photo):
    scene = prepare_scene(scene_photo, _box(scene_photo), 32, dilation=0)
    assert scene.image.shape == (1, 3, 32, 32) and scene.box == (0, 4, 32, 28)  # 128x96 -> 32x24, padded 4 + 4
    assert scene.input_image.size == (32, 24) and scene.mask_image.size == (32, 24)
    assert scene.valid.sum() == 32 * 24
    mask = np.asarray(scene.mask_image) > 127
    assert mask[8:18, 10:20].all() and mask.sum() == 10 * 10  # the 40 px square at 1/4 scale
    assert torch.equal(scene.background, scene.valid * (1 - scene.mask))
    grown = prepare_scene(scene_photo, _box(scene_photo), 32, dilation=2)
    assert (np.asarray(grown.mask_image) > 127).sum() > mask.sum()


def test_scene_rejects_masks_that_vanish_or_cover_everything(scene_photo):
    tiny_mask = np.zeros((96, 128), bool)
    tiny_mask[50, 60] = True
    with pytest.raises(MaskError, match="covers no pixel once the photo is resized to 32x24"):
        prepare_scene(scene_photo, tiny_mask, 32)
    with pytest.raises(MaskError, match="covers the whole photo"):
        prepare_scene(scene_photo, _box(scene_photo, (2, 2, 126, 94)), 32, dilation=3)


def test_composite_restores_every_pixel_outside_the_mask():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    edited = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    mask = np.zeros((24, 32), np.uint8)
    mask[4:20, 6:26] = 255
    for feather in (0, 3):
        out = np.asarray(composite(edited, original, Image.fromarray(mask), feather))
        assert (out[mask == 0] == np.asarray(original)[mask == 0]).all()
        assert (out[10:14, 14:18] == np.asarray(edited)[10:14, 14:18]).all()  # deep inside: the edit
    feathered = np.asarray(composite(edited, original, Image.fromarray(mask), 3)).astype(int)
    hard = np.asarray(composite(edited, original, Image.fromarray(mask), 0)).astype(int)
    assert (feathered[4, 6:26] != hard[4, 6:26]).any()  # the edge blends
