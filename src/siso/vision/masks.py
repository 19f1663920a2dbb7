"""The mask of the object to replace in an editing scene photo: from a file or a box, and the operations on masks.

Every mask is a boolean numpy array of shape (H, W) in the pixels of the photo it describes (True = object). A
detected mask comes from `siso.vision.segmenter.ObjectSegmenter`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

__all__ = ["MaskError", "box_mask", "clean_mask", "dilate", "load_mask"]


class MaskError(ValueError):
    """A mask that cannot be used; the message says why and what to do."""


def _checked(mask: np.ndarray, what: str) -> np.ndarray:
    if not mask.any():
        raise MaskError(f"{what} covers no pixel: mark the object to replace (white in a mask file)")
    if mask.all():
        raise MaskError(f"{what} covers every pixel, so nothing of the photo would be kept: mark only the object")
    return mask


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a mask image (white = object) for a scene photo of ``size``.

    Any mode is read: 16-bit images are thresholded at half their range, all others are converted to 8-bit
    luminance and thresholded at 127. A mask of another size but the photo's aspect ratio (within 1 %) is resized
    to it (nearest neighbour).

    Args:
        path: The mask image file.
        size: ``(width, height)`` of the scene photo.

    Returns:
        (height, width) bool array, True on the object.

    Raises:
        MaskError: The file is missing, unreadable or damaged, its aspect ratio differs from the photo's, or the mask
            covers no pixel or every pixel.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file {path} not found: pass an existing image file (white = object)")
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # Pillow clips these to 255 when making "L"
                mask = np.asarray(img) > 32767
            else:
                mask = np.asarray(img.convert("L")) > 127
    except (OSError, SyntaxError) as err:
        raise MaskError(f"cannot read mask {path}: {err}; save it as a PNG or JPEG") from None
    height, width = mask.shape
    if (width, height) != tuple(size):
        if abs(width * size[1] / (height * size[0]) - 1) > 0.01:
            raise MaskError(
                f"mask {path} is {width}x{height} but the photo is {size[0]}x{size[1]}: their aspect ratios differ; "
                "draw the mask on the photo itself"
            )
        resized = Image.fromarray(mask).resize(tuple(size), Image.Resampling.NEAREST)
        mask = np.asarray(resized).astype(bool)
    return _checked(mask, f"mask {path}")


def box_mask(box: str | Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The mask of a box: every pixel the box touches (fractional edges round outwards).

    Args:
        box: ``"x0,y0,x1,y1"`` or four numbers, in pixels of the scene photo (corners, not centres).
        size: ``(width, height)`` of the scene photo.

    Returns:
        (height, width) bool array, True inside the box.

    Raises:
        MaskError: Not four finite numbers, an empty box, a box outside the photo, or one covering all of it.
    """
    width, height = size
    try:
        values = [float(v) for v in (box.split(",") if isinstance(box, str) else box)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise MaskError(f"box {box!r} is not 4 numbers: write it as x0,y0,x1,y1 in pixels of the photo")
    if not all(math.isfinite(v) for v in values):
        raise MaskError(f"box {box!r} has a non-finite number: write it as x0,y0,x1,y1 in pixels of the photo")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise MaskError(f"box {box!r} is empty: it needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise MaskError(
            f"box {box!r} reaches outside the {width}x{height} photo: keep it within 0..{width}, 0..{height}"
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
    return _checked(mask, f"box {box!r}")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a mask by a disk: a pixel is set when it lies within ``pixels`` (Euclidean) of a set pixel.

    Args:
        mask: (H, W) bool array.
        pixels: Radius of the disk; 0 returns the mask unchanged.

    Returns:
        (H, W) bool array.

    Raises:
        ValueError: ``pixels`` is negative.
    """
    if pixels < 0:
        raise ValueError(f"dilation must be 0 or more pixels, got {pixels}")
    offsets = torch.arange(-pixels, pixels + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= pixels**2).float()
    grown = F.conv2d(torch.from_numpy(mask).float()[None, None], disk[None, None], padding=pixels)
    return grown[0, 0].numpy() > 0.5  # sums of 0/1 are exact in float32


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected region (4-connected) of a mask and fill its holes.

    Args:
        mask: (H, W) bool array.

    Returns:
        (H, W) bool array; all False when ``mask`` is.
    """
    regions, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    largest = np.bincount(regions.ravel())[1:].argmax() + 1
    return ndimage.binary_fill_holes(regions == largest)
