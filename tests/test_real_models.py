"""Slow tier: the real Hub checkpoints on a GPU. Skips itself unless CUDA is present and the weights are cached
(the suite runs with HF_HUB_OFFLINE=1: download them once with `hf download <id>`). Run: `pytest -m slow`."""

import math

import numpy as np
import pytest
import torch

from siso import OptimSettings, SisoConfig, load_backbone, optimize_subject
from siso.hub import ModelLoadError
from siso.losses import SimilarityLoss

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("model", ["sdxl-turbo", "sd-turbo"])
def test_real_backbone_optimizes(model, subject):
    config = SisoConfig(
        model=model,
        train_prompt="a photo of a toy",
        dtype="bf16",
        optim=OptimSettings(max_iters=6, patience=6, min_improvement=0.0),
    )
    try:
        backbone = load_backbone(model, "bf16", "cuda")
        loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject.resize((512, 384)), "cuda", torch.bfloat16)
    except ModelLoadError as err:
        pytest.skip(str(err))
    result = optimize_subject(backbone, subject, config, loss_fn=loss_fn, progress=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert result.best_image.size == (512, 512)
    assert result.best_loss <= losses[0]


@pytest.mark.parametrize("model", ["sdxl-turbo", "sd-turbo"])
def test_real_backbone_edits(model, subject):
    """ReNoise inversion reconstructs a photo well on a real checkpoint, and an edit keeps its background."""
    from siso import EditConfig, edit_subject, prepare_scene

    photo = subject.resize((512, 384))
    mask = np.zeros((384, 512), bool)
    mask[100:300, 150:350] = True
    config = EditConfig(model=model, train_prompt="a photo of a toy", dtype="bf16")
    config.optim.max_iters = config.optim.patience = 4
    try:
        backbone = load_backbone(model, "bf16", "cuda")
        loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cuda", torch.bfloat16)
    except ModelLoadError as err:
        pytest.skip(str(err))
    scene = prepare_scene(photo, mask, backbone.resolution, 8)
    result = edit_subject(backbone, scene, subject, config, loss_fn=loss_fn, progress=False)
    assert result.best_image.size == (512, 384)
    assert result.inversion_psnr > 20  # a trained model inverts and reconstructs a photo closely
    assert all(math.isfinite(h["loss"]) for h in result.history)
