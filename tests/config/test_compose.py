"""`siso.config.compose.ComposeSettings`: the composed loss's weights are refused, naming the value, out of range."""

import math

import pytest

from siso.config import ComposeSettings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"leak_weight": -0.1}, "leak_weight must be a finite number >= 0, got -0.1"),
        ({"presence_weight": math.nan}, "presence_weight must be a finite number >= 0, got nan"),
        ({"worst_weight": 1.5}, r"worst_weight is a share in \[0, 1\], got 1.5"),
        ({"presence_top_k": 0.0}, r"presence_top_k is a share in \(0, 1\], got 0.0"),
    ],
)
def test_out_of_range_weights_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ComposeSettings(**kwargs)


def test_the_defaults_are_valid_and_the_whole_range_is_taken():
    ComposeSettings()
    ComposeSettings(worst_weight=1.0, leak_weight=0.0, leak_margin=0.0, presence_weight=0.0, presence_top_k=1.0)
