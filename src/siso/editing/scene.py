"""The photo to edit at model resolution (`Scene`: resized, padded, with its object mask) and the composite of an
edit back into the photo."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from siso.images import pil_to_tensor, tensor_to_pil
from siso.vision.masks import MaskError, dilate


@dataclass
class Scene:
    """The photo to edit at model resolution.

    A non-square photo is resized so its long side is the model resolution and padded (edge pixels repeated) to a
    square; results are cropped back to ``box``, so the whole photo is kept.

    Attributes:
        image: (1, 3, R, R) the padded photo in [0, 1].
        mask: (1, 1, R, R) 1 on the object to replace (dilated), 0 elsewhere.
        valid: (1, 1, R, R) 1 on the photo's pixels, 0 on the padding.
        box: (left, top, right, bottom) of the photo's pixels in the square.
    """

    image: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    box: tuple[int, int, int, int]

    @property
    def background(self) -> torch.Tensor:
        """(1, 1, R, R) weights of the background term: the photo's pixels outside the mask."""
        return self.valid * (1 - self.mask)

    def locate(self, region: np.ndarray) -> tuple[int, int, int, int]:
        """The box (x0, y0, x1, y1) in whole pixels of the square around a region of the photo.

        Args:
            region: (H, W) bool in the photo's pixels, not empty.
        """
        height, width = region.shape
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        left, top, right, bottom = self.box
        sx, sy = (right - left) / width, (bottom - top) / height
        x0, x1 = left + math.floor(cols[0] * sx), left + math.ceil((cols[-1] + 1) * sx)
        y0, y1 = top + math.floor(rows[0] * sy), top + math.ceil((rows[-1] + 1) * sy)
        return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)

    def crop(self, image: Image.Image) -> Image.Image:
        """A square model-resolution image cropped to the photo's pixels."""
        return image.crop(self.box)

    @property
    def input_image(self) -> Image.Image:
        """The photo as the model sees it (resized, not padded)."""
        return self.crop(tensor_to_pil(self.image)[0])

    @property
    def mask_image(self) -> Image.Image:
        """The object mask (white = object) at the size of `input_image`."""
        return self.crop(Image.fromarray((self.mask[0, 0].cpu().numpy() * 255).astype(np.uint8)))


def prepare_scene(
    photo: Image.Image, mask: np.ndarray, resolution: int, dilation: int = 0, whole: bool = False
) -> Scene:
    """Resize (long side to ``resolution``) and pad the photo and its object mask; dilate the mask.

    Args:
        photo: The RGB photo to edit.
        mask: (H, W) boolean object mask in the photo's pixels.
        resolution: The backbone's image side.
        dilation: Pixels (at model resolution) to grow the mask by.
        whole: The mask may cover the whole photo (a refine of all of it: no background to keep).

    Raises:
        MaskError: the mask covers no pixel once resized (too small for this resolution), or covers the whole photo
            (unless ``whole``).
    """
    if mask.shape != (photo.height, photo.width):
        raise MaskError(f"mask is {mask.shape[1]}x{mask.shape[0]} px but the photo is {photo.width}x{photo.height}")
    scale = resolution / max(photo.size)
    width, height = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    left, top = (resolution - width) // 2, (resolution - height) // 2
    pad = (left, resolution - width - left, top, resolution - height - top)
    image = pil_to_tensor(photo.resize((width, height), Image.Resampling.LANCZOS))
    image = F.pad(image, pad, mode="replicate")
    # Area-average the mask, then threshold: a pixel is object when at least half of what it covers is.
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BOX)
    small = np.asarray(small) >= 128
    if not small.any():
        raise MaskError(
            f"the object mask covers no pixel once the photo is resized to {width}x{height}: draw a larger "
            "mask or box, or use a larger --resolution"
        )
    small = dilate(small, dilation)
    if small.all() and not whole:
        raise MaskError("the object mask covers the whole photo: nothing is left as background to keep")
    as_tensor = torch.from_numpy(small.astype(np.float32))[None, None]
    valid = F.pad(torch.ones(1, 1, height, width), pad)
    return Scene(image, F.pad(as_tensor, pad), valid, (left, top, left + width, top + height))


def composite(edited: Image.Image, original: Image.Image, mask: Image.Image, feather: int) -> Image.Image:
    """Paste ``original`` back outside ``mask``, blending over ``feather`` pixels *inside* the mask, so that every
    pixel outside the mask is exactly the original's.

    Args:
        edited, original: RGB images of one size.
        mask: L image of that size, white = object.
        feather: Blend width in pixels (0: a hard edge).
    """
    alpha = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    if feather:
        # An opening (erode, then blur by the same radius) never reaches outside the mask.
        size = 2 * feather + 1
        eroded = -F.max_pool2d(-alpha, size, stride=1, padding=feather)
        alpha = F.avg_pool2d(F.pad(eroded, (feather,) * 4, mode="replicate"), size, stride=1)
        alpha = alpha * (np.asarray(mask)[None, None] > 127)
    a = alpha[0, 0, :, :, None].numpy()
    blended = np.asarray(edited, dtype=np.float32) * a + np.asarray(original, dtype=np.float32) * (1 - a)
    return Image.fromarray(np.round(blended).astype(np.uint8))
