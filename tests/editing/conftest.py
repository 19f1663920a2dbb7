"""Editing fixtures: a scene photo with an object to replace, and a tiny detector and segmenter."""

import numpy as np
import pytest
import tiny
from PIL import Image


@pytest.fixture(scope="module")
def scene_photo() -> Image.Image:
    """A 128x96 "scene": a gradient with a blue square (the object to replace) at x 40..80, y 32..72."""
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.stack([255 - xx * 1.5, yy * 2.0, xx * 1.2 + 40], axis=-1)
    img[32:72, 40:80] = (30, 60, 220)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def detection_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    return tiny.make_grounding_dino(root / "gd"), tiny.make_sam(root / "sam")
