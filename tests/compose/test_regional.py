"""`siso.compose.regional`: saved subjects blended by region at sampling time, on every backbone family."""

import pytest
import torch

from siso.backbones import load_backbone
from siso.compose import Box
from siso.compose.boxes import BoxError
from siso.compose.regional import RegionalSampler, region_weights
from siso.config import LoraSettings
from siso.lora import adapter_parameters, add_lora

FAMILIES = ["sd", "sdxl", "flux", "sana"]
PROMPT = "a photo of a dog and a cat"


def with_adapters(backbone, *names):
    """The backbone with a random (non-zero) LoRA adapter per name, all frozen."""
    for k, name in enumerate(names):
        add_lora(backbone, LoraSettings(rank=4), adapter=name)
        generator = torch.Generator().manual_seed(k)
        for param in adapter_parameters(backbone.denoiser, name).values():
            param.data = torch.randn(param.shape, generator=generator) * 0.3
            param.requires_grad_(False)
    return backbone


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request, model_dirs):
    """A tiny backbone of each family carrying two frozen random adapters, "dog" and "cat"."""
    return with_adapters(load_backbone(str(model_dirs[request.param]), device="cpu"), "dog", "cat")


def bare_latents(backbone, sampler, steps):
    """The bare model's latents (no adapter active), stepped as `Backbone.sample` steps them."""
    with torch.no_grad(), sampler.switch.only(None):
        cond = backbone.encode_prompt(PROMPT)
        rollout = backbone.rollout(cond, torch.Generator().manual_seed(3), steps)
        latents = rollout.latents
        for i in range(len(rollout)):
            latents = rollout.step(backbone.predict(rollout, latents, i, cond, 0.0), i, latents)
    return latents


def test_weights_hard_soft_and_overlapping():
    hard = region_weights([Box(0, 0, 0.5, 1)], 64, 8, edge=0)[0]
    assert hard[:, :4].eq(1).all() and hard[:, 4:].eq(0).all()
    soft = region_weights([Box(0, 0, 0.5, 1)], 64, 8, edge=16)[0]
    # A 16 px ramp centred on the border at x = 32: the cells centred 4 px either side weigh 0.75 and 0.25; the image's
    # own borders do not ramp.
    assert soft[0, :5].tolist() == [1, 1, 1, 0.75, 0.25] and soft[:, 0].eq(1).all()
    both = region_weights([Box(0, 0, 0.75, 1), Box(0.25, 0, 1, 1)], 64, 8, edge=0)
    assert both.sum(0).eq(1).all() and both[0, 0, 3].item() == 0.5
    with pytest.raises(BoxError, match="covers no cell"):
        region_weights([Box(1, 1, 2, 2)], 64, 8, edge=0)
    with pytest.raises(ValueError, match="edge"):
        region_weights([Box(0, 0, 1, 1)], 64, 8, edge=-1)


def test_one_subject_over_the_whole_image_draws_what_its_lora_alone_draws(backbone):
    sampler = RegionalSampler(backbone, ["dog"], [Box(0, 0, 1, 1)])
    assert sampler.bare_weight is None  # one pass a step
    with sampler.switch.only("dog"):  # the stock pipeline's call with the dog's adapter alone
        alone = backbone.generate(PROMPT, seed=3, num_inference_steps=2)
    composed = sampler.generate(PROMPT, seed=3, num_inference_steps=2)
    assert composed.tobytes() == alone.tobytes()
    with sampler.switch.only(None):
        bare = backbone.generate(PROMPT, seed=3, num_inference_steps=2)
    assert bare.tobytes() != alone.tobytes()  # the adapter does change the image


def test_outside_every_hard_region_the_latent_is_the_bare_models(backbone):
    sampler = RegionalSampler(backbone, ["dog", "cat"], [Box(0, 0, 0.5, 0.5), Box(0.5, 0.5, 1, 1)], edge=0)
    with torch.no_grad():
        conds = sampler.encode_prompt(PROMPT)
        composed = sampler.latents(conds, torch.Generator().manual_seed(3), 2)
    bare = bare_latents(backbone, sampler, 2)
    outside = sampler.bare_weight.expand_as(composed) == 1
    inside = ~outside
    assert outside.any() and inside.any()
    assert torch.equal(composed[outside], bare[outside])
    assert not torch.equal(composed[inside], bare[inside])


def test_gradient_reaches_each_lora_only_through_its_own_region(backbone):
    params = {name: list(adapter_parameters(backbone.denoiser, name).values()) for name in ("dog", "cat")}
    sampler = RegionalSampler(backbone, ["dog", "cat"], [Box(0, 0, 0.5, 0.5), Box(0.5, 0.5, 1, 1)], edge=0)
    with torch.no_grad():
        conds = sampler.encode_prompt(PROMPT)
    for param in params["dog"] + params["cat"]:
        param.requires_grad_(True)
    try:
        latents = sampler.latents(conds, torch.Generator().manual_seed(3), 2, grad_steps=2)
        dog = sampler.supports[0].expand_as(latents)
        # Everything but the dog's region: the cat's region and the background.
        grads = torch.autograd.grad((latents * ~dog).square().sum(), params["dog"] + params["cat"], allow_unused=True)
    finally:
        for param in params["dog"] + params["cat"]:
            param.requires_grad_(False)
    dog_grads, cat_grads = grads[: len(params["dog"])], grads[len(params["dog"]) :]
    assert all(g is None or not g.any() for g in dog_grads)
    assert any(g is not None and g.any() for g in cat_grads)
