"""Inversion of the photo to edit: ReNoise (Garibi et al. 2024), with DDIM-style inversion as its special case.

Editing denoises from the *inverted* latent of the input photo, so that with the LoRA at identity the denoised image
reproduces the photo and the LoRA only has to change the subject. Inversion runs the backbone's `EditSampler` steps
backwards, from the clean latent to the noisiest level of the edit (t = 249 -> 499 -> 749 for 4 steps at strength
0.75). An inverted step must satisfy ``step(predict(z), z, noise) = z_prev`` for the noisier latent ``z``, which
appears on both sides; ReNoise solves it by fixed-point iteration ("renoising": predict at the current estimate,
invert the step, repeat), averages the last predictions, and regularises each towards the statistics of Gaussian
noise. DDIM inversion predicts once, at the less noisy latent. For ancestral samplers the per-step noise is fixed,
shared by inversion and denoising, and corrected so that denoising the inverted latent retraces the inversion.

Rectified-flow samplers (FLUX, Sana: `siso.backbones.FlowSampler`) invert the same way, with one exception: their
prediction is a velocity ``noise - x0``, not a noise prediction, so it has no Gaussian statistics to be pushed
towards (and FLUX's is a packed (1, seq, 4C) sequence, not an image-shaped (1, C, h, w) one); the regularisation is
skipped for them (``EditSampler.gaussian_prediction``), whatever ``kl_weight`` and ``ac_weight`` say. The settings
are recorded as given; the renoising iterations and averaging apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from siso.backbones import EditSampler
from siso.config import InversionSettings


@dataclass
class Inversion:
    """An inverted photo: denoising ``latents`` with ``noises`` (and the LoRA at identity) reconstructs it.

    Attributes:
        latents: fp32 latent at the noisiest level of the edit (``sampler.timesteps[0]``), of the layout
            `Backbone.encode` gives: (1, C, h, w), or FLUX's packed (1, seq, 4C).
        noises: Per denoising step, the noise an ancestral step adds, of that shape (unused by deterministic steps).
        model_evaluations: Denoiser passes the inversion took (its cost, beside one pass per denoising step).
    """

    latents: torch.Tensor
    noises: list[torch.Tensor]
    model_evaluations: int


def patch_kl(x: torch.Tensor, reference: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum over 4x4 patches and channels of |KL| between the per-patch Gaussian fits of ``x`` and ``reference``.

    Args:
        x, reference: (1, C, h, w) noise predictions.
    """

    def stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = t.unfold(2, patch, patch).unfold(3, patch, patch).flatten(-2)  # (1, C, h/p, w/p, p*p)
        return patches.mean(-1), patches.var(-1)

    (mu0, var0), (mu1, var1) = stats(x), stats(reference)
    eps = 1e-6
    kl = torch.log((var1 + eps) / (var0 + eps)) + (var0 + (mu0 - mu1) ** 2) / (var1 + eps) - 1
    return kl.abs().sum()


def auto_correlation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Squared spatial auto-correlation of each channel at a random shift, over a pyramid down to 8 px (pix2pix-zero).

    Args:
        x: (1, C, h, w) noise prediction.
        generator: Draws the shifts (CPU generator).
    """
    loss = x.new_zeros(())
    for channel in x[0]:
        level = channel[None, None]
        while True:
            shift = int(torch.randint(0, level.shape[2] // 2, (1,), generator=generator))
            loss = loss + (level * torch.roll(level, shift, dims=2)).mean() ** 2
            loss = loss + (level * torch.roll(level, shift, dims=3)).mean() ** 2
            if level.shape[2] <= 8:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return loss


def regularize(
    prediction: torch.Tensor, reference: torch.Tensor, settings: InversionSettings, generator: torch.Generator
) -> torch.Tensor:
    """Push a noise prediction towards Gaussian statistics: gradient steps on `patch_kl` (against ``reference``, the
    prediction at the forward-noised clean latent) and on `auto_correlation`, ``settings.regularization_rounds``
    times. Returns a new tensor; ``prediction`` is unchanged."""

    def gradient(loss_fn, value: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            value = value.detach().requires_grad_(True)
            return torch.autograd.grad(loss_fn(value), value)[0]

    for _ in range(settings.regularization_rounds):
        if settings.kl_weight > 0:
            grad = gradient(lambda v: patch_kl(v, reference), prediction)
            prediction = prediction - settings.kl_weight * grad.clamp(-100, 100)
        if settings.ac_weight > 0:
            for _ in range(settings.ac_rolls):
                grad = gradient(lambda v: auto_correlation(v, generator), prediction)
                prediction = prediction - settings.ac_weight * grad / settings.ac_rolls
    return prediction


@torch.no_grad()
def invert(
    sampler: EditSampler,
    latents: torch.Tensor,
    cond: dict,
    settings: InversionSettings,
    generator: torch.Generator,
    guidance_scale: float = 0.0,
    progress: bool = False,
) -> Inversion:
    """Invert clean ``latents`` to the noisiest level of ``sampler``.

    Args:
        sampler: The backbone's edit sampler (`siso.backbones.Backbone.edit_sampler`); denoising uses the same one.
        latents: (1, C, h, w) VAE latents of the photo (`Backbone.encode`'s; FLUX's are packed, (1, seq, 4C)).
        cond: Text conditioning (`Backbone.encode_prompt`) of the edit prompt.
        settings: ReNoise settings (`InversionSettings.preset("ddim")` for plain DDIM-style inversion). The noise
            regularisation applies only to a sampler whose prediction is Gaussian noise
            (``sampler.gaussian_prediction``): a flow sampler's velocity is not, and is left as predicted.
        generator: CPU generator for the per-step noises, the regularisation reference noise and its random shifts.
        guidance_scale: Classifier-free guidance, as the denoising uses.
        progress: Show a progress bar over the steps.

    Returns:
        The inverted latent, the (corrected) per-step noises and the number of denoiser passes.

    Raises:
        FloatingPointError: the inversion produced non-finite values.
    """
    shape, device = latents.shape, latents.device
    noises = [torch.randn(shape, generator=generator).to(device) for _ in range(len(sampler))]
    reference_noise = torch.randn(shape, generator=generator).to(device)
    regularizing = (
        sampler.gaussian_prediction
        and settings.regularization_rounds > 0
        and (settings.kl_weight > 0 or settings.ac_weight > 0)
    )
    clean = latents.float()
    target = clean  # the less noisy latent that inverted step i must lead back to
    evaluations = 0

    def predict(z: torch.Tensor, i: int) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        return sampler.predict(z.to(latents.dtype), i, cond, guidance_scale)

    for i in tqdm(reversed(range(len(sampler))), total=len(sampler), desc="inversion", disable=not progress):
        first = sampler.timesteps[i] < settings.first_step_max_timestep
        iterations = settings.first_step_renoise_steps if first else settings.renoise_steps
        lo, hi = settings.first_step_average if first else settings.average
        reference = predict(sampler.add_noise(clean, reference_noise, i), i) if regularizing else None
        estimate, total, count = target, None, 0
        for k in range(iterations + 1):
            direction = predict(estimate, i)
            if lo <= k < hi:
                total, count = (direction if total is None else total + direction), count + 1
            if regularizing and k >= lo:
                direction = regularize(direction, reference, settings, generator)
            estimate = sampler.invert_step(direction, i, target, noises[i])
        if count:
            average = total / count
            if regularizing:
                average = regularize(average, reference, settings, generator)
            estimate = sampler.invert_step(average, i, target, noises[i])
        scale = sampler.noise_scale(i)
        if settings.noise_correction and scale > 0:
            # The noise for which denoising step i, from `estimate`, lands exactly on `target`.
            direction = predict(estimate, i)
            noises[i] = (sampler.invert_step(direction, i, target, torch.zeros_like(target)) - estimate) / scale
        target = estimate
    if not (torch.isfinite(target).all() and all(torch.isfinite(n).all() for n in noises)):
        raise FloatingPointError("the inversion diverged (non-finite latents); try --inversion ddim or --dtype fp32")
    return Inversion(target, noises, evaluations)
