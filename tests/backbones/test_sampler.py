"""`siso.backbones.sampler`: the rectified-flow edit sampler of FLUX and Sana takes `sample`'s schedule, cut by
strength, steps as the stock schedulers step, is inverted exactly for a fixed velocity, and ReNoise inverts it (without
the noise regularisation, which assumes Gaussian noise predictions) far better than one-pass DDIM inversion."""

import pytest
import torch

import siso.editing.inversion
from siso.backbones import EditSampler, FlowSampler, load_backbone
from siso.config import InversionSettings
from siso.editing.inversion import invert

PROMPT = "a photo of a dog"
GUIDANCE = {"flux": 0.0, "sana": 4.5}  # the families' own (Sana: CFG, a batch of 2)
STEPS = {"flux": 4, "sana": 20}  # editing's schedules (`EditConfig` with the family's defaults)


@pytest.fixture(scope="module")
def backbones(model_dirs):
    return {family: load_backbone(str(model_dirs[family]), device="cpu", resolution=32) for family in ("flux", "sana")}


def _constant_velocity(latents, t, cond, guidance_scale):
    return torch.full_like(latents, 0.5) + t / 1000


def test_invert_step_inverts_step_for_a_fixed_direction():
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    sampler = FlowSampler(sigmas[:-1] * 1000, sigmas, 0.75, _constant_velocity, torch.float32)
    assert sampler.timesteps.tolist() == [750, 500, 250] and sampler.sigmas.tolist() == [0.75, 0.5, 0.25, 0.0]
    assert not sampler.gaussian_prediction and EditSampler.gaussian_prediction
    generator = torch.Generator().manual_seed(0)
    latents, direction = torch.randn(2, 1, 64, 16, generator=generator)  # FLUX's packed layout
    for i in range(len(sampler)):
        stepped = sampler.step(direction, i, latents, torch.full_like(latents, float("nan")))  # noise is unused
        assert torch.equal(stepped, latents + (sampler.sigmas[i + 1] - sampler.sigmas[i]) * direction)
        torch.testing.assert_close(sampler.invert_step(direction, i, stepped, None), latents, rtol=0, atol=1e-6)
        assert sampler.noise_scale(i) == 0.0
    # The rectified flow's forward process, and the velocity it implies (noise - x0) taking it to the clean latent.
    noise = torch.randn(latents.shape, generator=generator)
    noised = sampler.add_noise(latents, noise, 1)
    torch.testing.assert_close(noised, 0.5 * latents + 0.5 * noise)
    torch.testing.assert_close(noised - sampler.sigmas[1] * (noise - latents), latents)


@pytest.mark.parametrize(("steps", "strength", "kept"), [(4, 1.0, 4), (4, 0.75, 3), (4, 0.3, 1), (20, 0.75, 15)])
def test_strength_keeps_the_last_steps(steps, strength, kept):
    sigmas = torch.linspace(1, 0, steps + 1)
    sampler = FlowSampler(sigmas[:-1] * 1000, sigmas, strength, _constant_velocity, torch.float32)
    assert len(sampler) == kept
    assert torch.equal(sampler.timesteps, sigmas[steps - kept : -1] * 1000)
    assert torch.equal(sampler.sigmas, sigmas[steps - kept :])


def test_strength_that_leaves_no_step_is_refused():
    sigmas = torch.linspace(1, 0, 5)
    for strength, message in ((0.2, "leaves no denoising step"), (0.0, r"must be in \(0, 1\]")):
        with pytest.raises(ValueError, match=message):
            FlowSampler(sigmas[:-1] * 1000, sigmas, strength, _constant_velocity, torch.float32)


@pytest.mark.parametrize("family", ["flux", "sana"])
@pytest.mark.parametrize("steps", [2, 4])
def test_strength_one_is_the_schedule_sample_uses(backbones, family, steps):
    """At strength 1 the sampler's timesteps are the ones `sample` calls the denoiser at (recorded), its sigmas are
    the scheduler's after `sample`, and making the sampler leaves the pipeline's scheduler as it was."""
    backbone = backbones[family]
    cond = backbone.encode_prompt(PROMPT, GUIDANCE[family])
    seen = []
    hook = backbone.denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["timestep"][0].item()),
        with_kwargs=True,
    )
    try:
        with torch.no_grad():
            backbone.sample(cond, torch.Generator().manual_seed(0), steps, 0, GUIDANCE[family])
            scheduler = backbone.pipe.scheduler
            before = (scheduler.timesteps.clone(), scheduler.sigmas.clone())
            sampler = backbone.edit_sampler(steps, 1.0)
            assert torch.equal(scheduler.timesteps, before[0]) and torch.equal(scheduler.sigmas, before[1])
            sampled, seen[:] = list(seen), []
            latents = backbone.encode(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
            for i in range(len(sampler)):
                sampler.predict(latents, i, cond, GUIDANCE[family])
    finally:
        hook.remove()
    assert len(sampler) == steps and seen == sampled
    torch.testing.assert_close(sampler.sigmas, before[1].to(sampler.sigmas.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_step_is_the_stock_schedulers(backbones, family):
    """FLUX: the step is FlowMatchEulerDiscreteScheduler's. Sana: DPM-Solver++'s first-order update on flow sigmas,
    which is what its multistep solver takes on its first step, is the same Euler step."""
    backbone = backbones[family]
    sampler = backbone.edit_sampler(STEPS[family], 1.0)
    scheduler = type(backbone.pipe.scheduler).from_config(backbone.pipe.scheduler.config)
    if family == "flux":
        backbone.set_schedule(scheduler, STEPS[family])
    else:
        scheduler.set_timesteps(STEPS[family])
    generator = torch.Generator().manual_seed(0)
    latents = backbone.encode(torch.rand(1, 3, 32, 32, generator=generator))
    velocity = torch.randn(latents.shape, generator=generator)
    expected = scheduler.step(velocity, scheduler.timesteps[0], latents, return_dict=False)[0]
    torch.testing.assert_close(sampler.step(velocity, 0, latents, None), expected, rtol=0, atol=1e-6)


def _round_trip(backbone, family, settings):
    """Invert a VAE-encoded photo (strength 0.75 of the family's editing schedule), denoise it back with
    `Backbone.denoise` (no LoRA); returns the relative latent error, the pixel MSE against the VAE round trip, and the
    inversion."""
    cond = backbone.encode_prompt(PROMPT, GUIDANCE[family])
    sampler = backbone.edit_sampler(STEPS[family], 0.75)
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    clean = backbone.encode(photo)
    inversion = invert(sampler, clean, cond, settings, torch.Generator().manual_seed(0), GUIDANCE[family])
    decoded = []
    decode = backbone.decode
    backbone.decode = lambda latents: decoded.append(latents) or decode(latents)  # what `denoise` decodes
    try:
        with torch.no_grad():
            image = backbone.denoise(sampler, inversion.latents, inversion.noises, cond, 0, GUIDANCE[family])
            round_trip = decode(clean)
    finally:
        del backbone.decode
    error = float((decoded[0] - clean).norm() / clean.norm())
    return error, float((image - round_trip).square().mean()), inversion


# Measured (CPU fp32, 1-16 threads): FLUX latent error 0.046 ReNoise, 1.50 DDIM; Sana 0.021 ReNoise, 0.17 DDIM.
@pytest.mark.parametrize(("family", "renoise_at_most"), [("flux", 0.15), ("sana", 0.06)])
def test_renoise_inverts_the_flow_far_better_than_ddim(backbones, family, renoise_at_most):
    ddim_error, ddim_mse, ddim = _round_trip(backbones[family], family, InversionSettings.preset("ddim"))
    renoise_error, renoise_mse, renoise = _round_trip(backbones[family], family, InversionSettings())
    assert renoise_error < renoise_at_most < ddim_error and renoise_error < ddim_error / 5
    assert renoise_mse < ddim_mse
    n = len(backbones[family].edit_sampler(STEPS[family], 0.75))
    assert ddim.model_evaluations == n
    first = 2 if family == "sana" else 0  # steps below t=250 (Sana's 249, 136) renoise 5 times; FLUX's 250 is not
    assert renoise.model_evaluations == 6 * first + 10 * (n - first)  # no reference passes: nothing to regularise


def test_invert_skips_the_noise_regularisation_for_a_flow_sampler(backbones, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("regularised a velocity")

    monkeypatch.setattr(siso.editing.inversion, "regularize", refuse)
    backbone = backbones["flux"]
    settings = InversionSettings()
    assert settings.kl_weight > 0 and settings.ac_weight > 0  # asked for, and recorded as asked
    latents = backbone.encode(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    inversion = invert(
        backbone.edit_sampler(4, 0.75), latents, backbone.encode_prompt(PROMPT), settings, torch.Generator()
    )
    assert inversion.latents.shape == latents.shape == (1, 64, 64) and torch.isfinite(inversion.latents).all()
