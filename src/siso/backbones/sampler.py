"""The samplers: a generation's run of the family's scheduler, stepped one step at a time (`Rollout`), and editing's
steps, which editing denoises with and inversion (`siso.editing.inversion`) runs backwards.

`EditSampler` is editing's interface; `FlowSampler` is its rectified-flow form (FLUX, Sana), whose denoiser call comes
from the backbone. The SD family's Euler sampler is `siso.backbones.unet.EulerSampler`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class Rollout:
    """One sampling run of a family's scheduler, stepped by its caller (`Backbone.sample`, or the regional sampler of
    saved subjects, `siso.compose.regional`, which steps two at once).

    Attributes:
        latents: The initial latents (the pipeline's ``prepare_latents`` from the run's generator), in the layout the
            denoiser takes (FLUX: packed).
        timesteps: (n,) the schedule.
        scheduler: The scheduler this run steps (its state advances with every `step`).
        step_kwargs: Extra arguments of ``scheduler.step`` (an ancestral scheduler's generator).
        extras: What the family's `Backbone.predict` needs besides the latents (FLUX: ``image_ids``).
        release: Drops what the scheduler keeps of this run after its last step (a multistep solver's model outputs,
            which hold the autograd graph of its last steps).
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    scheduler: object
    step_kwargs: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    release: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, prediction: torch.Tensor, i: int, latents: torch.Tensor) -> torch.Tensor:
        """Step ``i``: the scheduler's update of ``latents`` given the denoiser's ``prediction``."""
        return self.scheduler.step(prediction, self.timesteps[i], latents, **self.step_kwargs, return_dict=False)[0]

    def fork(self) -> Rollout:
        """A twin run from the same latents: a copy of the scheduler in its current state, and of the step's generator
        (an ancestral twin draws the same noise as this run, in step with it)."""
        kwargs = {
            name: torch.Generator(value.device).set_state(value.get_state())
            if isinstance(value, torch.Generator)
            else value
            for name, value in self.step_kwargs.items()
        }
        return dataclasses.replace(self, scheduler=copy.deepcopy(self.scheduler), step_kwargs=kwargs)


def img2img_steps(num_inference_steps: int, strength: float) -> int:
    """The denoising steps that ``strength`` keeps of a ``num_inference_steps`` schedule, as diffusers' img2img
    pipelines count them: ``min(int(steps * strength), steps)``, the last ones.

    Raises:
        ValueError: ``strength`` is not in (0, 1], or it leaves no step.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = min(int(num_inference_steps * strength), num_inference_steps)
    if n < 1:
        raise ValueError(f"strength {strength} with {num_inference_steps} steps leaves no denoising step; raise either")
    return n


class EditSampler:
    """The last ``n`` steps of a ``num_inference_steps`` schedule (img2img's ``strength``), with explicit noise.

    Editing denoises the inverted latent of the input photo with these steps, and inversion runs them backwards. Both
    must use the *same* per-step noise for ancestral samplers, so `step` takes the noise as an argument instead of
    drawing it (ReNoise, Garibi et al. 2024). Steps are indexed ``0 .. n-1`` from the noisiest; step ``i`` goes from
    ``timesteps[i]`` to the next, less noisy level.

    Attributes:
        timesteps: (n,) the denoiser timesteps of the steps (e.g. 749, 499, 249 for 4 steps at strength 0.75).
        gaussian_prediction: Whether `predict`'s direction is a noise prediction, statistically a standard Gaussian
            of the latents' layout (B, C, h, w): ReNoise's noise regularisation (`siso.editing.inversion.regularize`)
            pushes it towards that, and is skipped for a sampler whose direction is not (`FlowSampler`).
    """

    timesteps: torch.Tensor
    gaussian_prediction: ClassVar[bool] = True

    def __len__(self) -> int:
        return len(self.timesteps)

    def predict(self, latents: torch.Tensor, i: int, cond: dict, guidance_scale: float = 0.0) -> torch.Tensor:
        """The sampler's update direction at step ``i`` (for epsilon-prediction: the predicted noise), in fp32."""
        raise NotImplementedError

    def step(self, direction: torch.Tensor, i: int, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Denoising step ``i`` from ``latents`` given `predict`'s ``direction`` and the step's ``noise``."""
        raise NotImplementedError

    def invert_step(
        self, direction: torch.Tensor, i: int, next_latents: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The ``latents`` for which ``step(direction, i, latents, noise) == next_latents`` (direction held fixed)."""
        raise NotImplementedError

    def noise_scale(self, i: int) -> float:
        """How much of ``noise`` step ``i`` adds (0 for a deterministic step)."""
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """Clean ``latents`` noised to the level of step ``i`` (the forward process)."""
        raise NotImplementedError


# The backbone's denoiser call: (latents, timestep, cond, guidance_scale) -> velocity, as `FlowSampler.predict` needs.
Velocity = Callable[[torch.Tensor, torch.Tensor, dict, float], torch.Tensor]


class FlowSampler(EditSampler):
    """Deterministic Euler steps of a rectified flow (FLUX, Sana), the last ``int(steps * strength)`` of a schedule.

    With ``z = (1 - sigma) * x0 + sigma * noise`` (rectified flow, Liu et al. 2023) and the model's velocity
    ``v = noise - x0``, step ``i`` is ``z_next = z + (sigma_next - sigma) * v(z, t)`` (FlowMatchEulerDiscreteScheduler's
    step), and its inverse ``z = z_next - (sigma_next - sigma) * v(z, t)`` is implicit in ``z``: DDIM-style inversion
    evaluates ``v`` at ``z_next``, ReNoise iterates to the fixed point. The steps add no noise (``noise`` is unused).

    A velocity is not a noise prediction (it is ``noise - x0``, not Gaussian; FLUX's are packed (B, seq, 4C)), so
    ReNoise's noise regularisation does not apply (`gaussian_prediction` False).

    Attributes:
        timesteps: (n,) the denoiser timesteps of the steps.
        sigmas: (n + 1,) the noise levels from ``timesteps[0]``'s to the last one (0).
    """

    gaussian_prediction: ClassVar[bool] = False

    def __init__(
        self,
        timesteps: torch.Tensor,
        sigmas: torch.Tensor,
        strength: float,
        velocity: Velocity,
        dtype: torch.dtype,
    ):
        """
        Args:
            timesteps: (N,) the whole schedule's timesteps, as the stock pipeline's sampler has them.
            sigmas: (N + 1,) its noise levels, the last one 0.
            strength: The share of the schedule kept (img2img's, `img2img_steps`).
            velocity: The backbone's denoiser call (with guidance as it samples), returning the velocity.
            dtype: What `step` returns (the backbone's dtype, as its sampler keeps the latents).

        Raises:
            ValueError: as `img2img_steps`.
        """
        begin = len(timesteps) - img2img_steps(len(timesteps), strength)
        self.timesteps, self.sigmas = timesteps[begin:], sigmas[begin:]
        self.velocity, self.dtype = velocity, dtype

    def predict(self, latents, i, cond, guidance_scale=0.0):
        return self.velocity(latents, self.timesteps[i], cond, guidance_scale).float()

    def step(self, direction, i, latents, noise):
        return (latents.float() + (self.sigmas[i + 1] - self.sigmas[i]) * direction).to(self.dtype)

    def invert_step(self, direction, i, next_latents, noise):
        return next_latents.float() - (self.sigmas[i + 1] - self.sigmas[i]) * direction

    def noise_scale(self, i):
        return 0.0

    def add_noise(self, latents, noise, i):
        sigma = self.sigmas[i]
        return (1 - sigma) * latents.float() + sigma * noise
