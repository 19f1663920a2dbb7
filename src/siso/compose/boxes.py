"""Where a subject goes in the generated image: a box, in pixels of the image or in fractions of its sides."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Whole pixels (x0, y0, x1, y1) of an image: columns x0..x1-1, rows y0..y1-1.
PixelBox = tuple[int, int, int, int]


class BoxError(ValueError):
    """A box that cannot be used; the message says why and how to write it."""


@dataclass(frozen=True)
class Box:
    """A box ``x0,y0,x1,y1``: corners in pixels of the generated image, or fractions of its sides when all four are
    at most 1 (``0,0,1,1`` is the whole image, ``0.5,0,1,1`` its right half).

    Raises:
        BoxError: a negative corner, or an empty box (x1 <= x0 or y1 <= y0).
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self):
        if not all(math.isfinite(v) for v in self.corners):
            raise BoxError(f"box {self} has a non-finite number: write it as x0,y0,x1,y1")
        if min(self.corners) < 0:
            raise BoxError(f"box {self} has a negative corner: boxes lie inside the image, from 0")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise BoxError(f"box {self} is empty: it needs x0 < x1 and y0 < y1")

    @classmethod
    def parse(cls, text: str) -> Box:
        """Read ``"x0,y0,x1,y1"``.

        Raises:
            BoxError: not four numbers, a non-finite one, or a box `Box` refuses.
        """
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise BoxError(
                f"box {text!r} is not 4 numbers: write it as x0,y0,x1,y1 in pixels of the generated image, or in "
                "fractions of its sides (all four at most 1)"
            )
        return cls(*values)

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1

    @property
    def fractional(self) -> bool:
        """Whether the corners are fractions of the image's sides (all four at most 1)."""
        return max(self.corners) <= 1

    def pixels(self, width: int, height: int) -> PixelBox:
        """The whole pixels the box touches in a ``width`` x ``height`` image (fractional edges round outwards).

        Raises:
            BoxError: a box in pixels reaching outside the image.
        """
        x0, y0, x1, y1 = self.corners
        if self.fractional:
            x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        elif x1 > width or y1 > height:
            raise BoxError(
                f"box {self} reaches outside the {width}x{height} image: keep it within 0..{width}, 0..{height}, or "
                "give fractions of its sides"
            )
        # A tiny fraction of a small image still covers one pixel (ceil); float noise must not add one more.
        left, top = math.floor(x0 + 1e-9), math.floor(y0 + 1e-9)
        return left, top, max(math.ceil(x1 - 1e-9), left + 1), max(math.ceil(y1 - 1e-9), top + 1)

    def covers(self, width: int, height: int) -> bool:
        """Whether the box is the whole image."""
        return self.pixels(width, height) == (0, 0, width, height)

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in self.corners)


def default_slots(count: int) -> list[Box]:
    """``count`` side-by-side boxes over the middle 80 % of the image's height: where subjects go when neither the
    user nor the detector places them."""
    return [Box(k / count, 0.1, (k + 1) / count, 0.9) for k in range(count)]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) in one coordinate system."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
