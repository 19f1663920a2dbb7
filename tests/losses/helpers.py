"""What the loss tests share: photo-like images of one subject, generic images, and a batch to score."""

import numpy as np
import torch
from PIL import Image


def _photo(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    img = np.stack([xx * rng.uniform(2, 8), yy * rng.uniform(2, 8), 255 - xx * rng.uniform(1, 6)], -1)
    img[rng.integers(4, 12) : rng.integers(18, 28), rng.integers(4, 12) : rng.integers(18, 28)] = rng.integers(
        0, 255, 3
    )
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


PHOTOS = [_photo(0), _photo(5, (40, 32))]  # two photos of one subject, of different sizes
GENERIC = [_photo(seed) for seed in (10, 11, 12)]


def _images(requires_grad: bool = False) -> torch.Tensor:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    return images.requires_grad_(requires_grad)
