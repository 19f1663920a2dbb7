"""Configs refuse bad values, non-finite ones included (``nan <= 0`` is False: a plain range check lets NaN in)."""

import math

import pytest
import torch

from siso.config import SEED_MAX, SEED_MIN, LoraSettings, OptimSettings, SimilaritySettings, SisoConfig, check_seed

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("cls", "field", "message"),
    [
        (OptimSettings, "lr", "lr must be a finite number > 0"),
        (OptimSettings, "min_improvement", "min_improvement is a fraction in"),
        (OptimSettings, "weight_decay", "weight_decay must be a finite number >= 0"),
        (OptimSettings, "grad_clip", "grad_clip must be a finite number > 0"),
        (OptimSettings, "guidance_scale", "guidance_scale must be a finite number >= 0"),
        (LoraSettings, "alpha", "LoRA alpha must be a finite number > 0"),
        (LoraSettings, "text_encoder_lr", "text_encoder_lr must be a finite number > 0"),
        (SimilaritySettings, "dino_weight", "loss weights must be finite numbers >= 0"),
        (SimilaritySettings, "ir_weight", "loss weights must be finite numbers >= 0"),
    ],
)
def test_non_finite_numbers_are_refused(cls, field, message, value):
    with pytest.raises(ValueError, match=message):
        cls(**{field: value})


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (OptimSettings, {"lr": 0.0}, "lr must be a finite number > 0"),
        (OptimSettings, {"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        (OptimSettings, {"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        (LoraSettings, {"rank": 0}, "rank must be >= 1"),
        (SimilaritySettings, {"ir_weight": -1.0}, "loss weights must be finite numbers >= 0"),
        (SisoConfig, {"resolution": 100}, "positive multiple of 8"),
    ],
)
def test_out_of_range_values_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_seed_range_is_what_torch_accepts():
    for seed in (SEED_MIN, -1, 0, SEED_MAX):
        torch.Generator().manual_seed(seed)
        check_seed(seed)
        OptimSettings(seed=seed)
    for seed in (SEED_MIN - 1, SEED_MAX + 1):
        with pytest.raises(ValueError, match="Overflow"):
            torch.Generator().manual_seed(seed)
        with pytest.raises(ValueError, match="seed must be between"):
            OptimSettings(seed=seed)
