"""`siso.eval.plots`: the per-metric histogram, drawn with PIL."""

import math

import numpy as np

from siso.eval.plots import histogram

BAR, MEAN = (0x4C, 0x78, 0xA8), (0xE4, 0x57, 0x56)


def _pixels(image, colour) -> int:
    return int((np.asarray(image) == colour).all(axis=-1).sum())


def test_histogram_draws_bars_and_the_mean_and_leaves_non_finite_values_out():
    plot = histogram([0.1, 0.2, 0.2, 0.9], "dino", size=(240, 150))
    assert plot.size == (240, 150) and _pixels(plot, BAR) > 0 and _pixels(plot, MEAN) > 0
    same = histogram([0.1, 0.2, 0.2, 0.9, math.nan, math.inf], "dino", size=(240, 150))
    title = (0, 0, 240, 24)  # the title alone says "2 non-finite"
    assert np.array_equal(np.asarray(same)[24:], np.asarray(plot)[24:])
    assert not np.array_equal(np.asarray(same.crop(title)), np.asarray(plot.crop(title)))
    empty = histogram([math.nan], "dino")
    assert _pixels(empty, BAR) == 0 and _pixels(empty, MEAN) == 0  # the frame only
