"""`siso.backbones.unet`: the grad-enabled sampler of SD-Turbo and SDXL-Turbo matches the stock diffusers pipelines."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from siso.backbones import load_backbone

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
PROMPT = "a photo of a dog"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize(("steps", "guidance"), [(1, 0.0), (2, 0.0), (2, 3.0)])
def test_sampler_matches_stock_pipeline(model_dirs, family, steps, guidance):
    # 2 steps exercise the scheduler state and (SDXL-Turbo) ancestral noise from the generator; 3.0 exercises CFG.
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    cond = backbone.encode_prompt(PROMPT, guidance)
    ours = backbone.sample(cond, torch.Generator().manual_seed(7), steps, grad_steps=steps, guidance_scale=guidance)
    assert ours.shape == (1, 3, 32, 32)

    stock = PIPELINES[family].from_pretrained(model_dirs[family])
    expected = stock(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        output_type="pt",
        generator=torch.Generator().manual_seed(7),
    ).images
    # Same operations in the same order on CPU fp32: identical up to float rounding.
    torch.testing.assert_close(ours.detach(), expected, atol=1e-5, rtol=0)
