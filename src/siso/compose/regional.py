"""Several saved subjects in one image, each in its region, with no new learning: regional sampling.

At every denoising step the denoiser runs once per subject with only that subject's LoRA adapter active, and once
with none, and the predictions are blended with the regions' weights in latent space (OMG's noise blending, Kong et
al. 2024, arXiv 2403.10983): ``p = sum_k w_k p_k + (1 - sum_k w_k) p_bare``, K + 1 denoiser passes a step.

Two choices make the composition exact where it should be:

- The bare pass runs on the bare model's own trajectory (a twin of the scheduler, `siso.backbones.sampler.Rollout.fork`,
  stepped with the bare prediction), not on the composed latent. With hard regions (``edge=0``) the composed latent
  outside every region is then the bare model's latent at every step, exactly; inside, each subject's pass sees the
  whole composed latent.
- Where the weights of the subjects cover a cell completely, the bare pass is not needed there; where they cover the
  whole grid it is skipped, so one subject over the whole image costs one pass and draws what its LoRA alone draws.

The weights live on the denoiser's output grid (`Backbone.latent_side` cells per side: a latent pixel; FLUX: a packed
2x2 patch). A region is a box (`siso.compose.Box`); its weight is 1 inside, 0 outside, with a linear ramp ``edge``
image pixels wide centred on each border that is not the image's own (`EDGE`; 0: hard). Where regions overlap their
weights are scaled to sum to 1.

Under gradients (a polish, `siso.runs.compose`), each subject's pass takes the composed latent with the gradient
flowing only through its own region's cells (the rest detached), so the gradient that reaches a subject's LoRA comes
only through the latents of its own region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from PIL import Image

from siso.adapters import AdapterSwitch
from siso.backbones import Backbone
from siso.compose.boxes import Box, BoxError
from siso.images import tensor_to_pil

# The soft edge of a region, in image pixels: a linear ramp this wide centred on the box's border.
EDGE = 16.0


def region_weights(boxes: Sequence[Box], resolution: int, side: int, edge: float = EDGE) -> torch.Tensor:
    """Each box's weight on a ``side`` x ``side`` grid over a ``resolution``-pixel square image.

    Args:
        boxes: The regions.
        resolution: The image side in pixels.
        side: Cells per side of the grid.
        edge: Width in image pixels of the linear ramp centred on each border that is not the image's (0: hard).

    Returns:
        (K, side, side) float32 weights in [0, 1] whose sum over K is at most 1.

    Raises:
        BoxError: a box covering no cell centre (too small for the grid), or reaching outside the image.
        ValueError: a negative or non-finite ``edge``.
    """
    if not (math.isfinite(edge) and edge >= 0):
        raise ValueError(f"the regions' edge must be a finite number of pixels >= 0, got {edge}")
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) * resolution / side
    weights = []
    for box in boxes:
        x0, y0, x1, y1 = box.pixels(resolution, resolution)
        axes = []
        for low, high in ((y0, y1), (x0, x1)):
            inf = torch.full_like(centres, math.inf)
            distance = torch.minimum(
                centres - low if low > 0 else inf, high - centres if high < resolution else inf
            )  # to the nearest border inside the image; positive inside the box
            axes.append((distance > 0).double() if edge == 0 else (0.5 + distance / edge).clamp(0, 1))
        weight = axes[0][:, None] * axes[1][None, :]
        if not weight.any():
            raise BoxError(
                f"box {box} covers no cell of the denoiser's {side}x{side} grid ({resolution / side:g} px cells): make "
                "it larger"
            )
        weights.append(weight)
    weights = torch.stack(weights)
    total = weights.sum(0)
    return torch.where(total > 1, weights / total, weights).float()


class RegionalSampler:
    """Draws with several LoRA adapters loaded on one backbone, each in its region (the module docstring's
    blending).

    Args:
        backbone: The backbone, carrying every adapter (`siso.lora.load_lora` with their names).
        adapters: The adapters' names, one per region.
        boxes: Each adapter's region.
        edge: The regions' soft edge in image pixels (`EDGE`; 0: hard).

    Raises:
        ValueError: no adapter, or not one box per adapter; an adapter the backbone's denoiser does not carry.
        BoxError: as `region_weights`.
    """

    def __init__(self, backbone: Backbone, adapters: Sequence[str], boxes: Sequence[Box], edge: float = EDGE):
        if not adapters or len(adapters) != len(boxes):
            raise ValueError("regional sampling takes one box per adapter, and at least one")
        missing = [a for a in adapters if a not in getattr(backbone.denoiser, "peft_config", {})]
        if missing:
            raise ValueError(f"the backbone carries no adapter named {', '.join(missing)}")
        self.backbone, self.adapters, self.boxes, self.edge = backbone, list(adapters), list(boxes), edge
        weights = region_weights(boxes, backbone.resolution, backbone.latent_side, edge).to(backbone.device)
        self.weights = [backbone.latent_layout(w) for w in weights]
        self.supports = [w > 0 for w in self.weights]
        bare = 1 - weights.sum(0)
        self.bare_weight = backbone.latent_layout(bare) if bool((bare > 0).any()) else None
        text_encoders = [m for m in backbone.text_encoders.values() if m is not None]
        self.switch = AdapterSwitch([backbone.denoiser, *text_encoders])
        self._text_adapters = {a for m in text_encoders for a in getattr(m, "peft_config", {})}

    def encode_prompt(self, prompt: str, guidance_scale: float = 0.0) -> dict[str | None, dict]:
        """Each pass's conditioning: the bare model's (key ``None``) and, per adapter, the prompt encoded with that
        adapter's text-encoder LoRA (the bare conditioning where it has none)."""
        with self.switch.only(None):
            conds: dict[str | None, dict] = {None: self.backbone.encode_prompt(prompt, guidance_scale)}
        for adapter in self.adapters:
            if adapter in self._text_adapters:
                with self.switch.only(adapter):
                    conds[adapter] = self.backbone.encode_prompt(prompt, guidance_scale)
            else:
                conds[adapter] = conds[None]
        return conds

    def latents(
        self,
        conds: dict[str | None, dict],
        generator: torch.Generator,
        num_inference_steps: int,
        grad_steps: int = 0,
        guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """The composed final latents (before the VAE), keeping the autograd graph of the last ``grad_steps`` steps.

        Args:
            conds: `encode_prompt`'s.
            generator: Seeds the initial latents (and an ancestral sampler's noise), as `Backbone.sample`'s.
            num_inference_steps: Denoising steps.
            grad_steps: Steps with gradients, the last ones.
            guidance_scale: Classifier-free guidance (above 1: on), for every pass.

        Returns:
            The latents in the denoiser's layout (FLUX: packed).
        """
        backbone = self.backbone
        rollout = backbone.rollout(conds[None], generator, num_inference_steps)
        bare = rollout.fork() if self.bare_weight is not None else None
        latents = bare_latents = rollout.latents
        for i in range(len(rollout)):
            with nullcontext() if i >= num_inference_steps - grad_steps else torch.no_grad():
                blend = None
                for adapter, weight, support in zip(self.adapters, self.weights, self.supports, strict=True):
                    # The gradient reaches this adapter only through its own region's latents.
                    given = torch.where(support, latents, latents.detach()) if torch.is_grad_enabled() else latents
                    with self.switch.only(adapter):
                        prediction = backbone.predict(rollout, given, i, conds[adapter], guidance_scale)
                    term = weight * prediction.float()
                    blend = term if blend is None else blend + term
                if bare is not None:
                    with self.switch.only(None):
                        bare_prediction = backbone.predict(bare, bare_latents, i, conds[None], guidance_scale)
                    blend = blend + self.bare_weight * bare_prediction.float()
                    bare_latents = bare.step(bare_prediction, i, bare_latents)
                latents = rollout.step(blend.to(prediction.dtype), i, latents)
        rollout.release()
        return latents

    def sample(
        self,
        conds: dict[str | None, dict],
        generator: torch.Generator,
        num_inference_steps: int,
        grad_steps: int = 0,
        guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """`latents` through the VAE: the image (1, 3, H, W) in [0, 1], differentiable in the last ``grad_steps``
        steps."""
        return self.backbone.decode(self.latents(conds, generator, num_inference_steps, grad_steps, guidance_scale))

    @torch.no_grad()
    def generate(self, prompt: str, seed: int, num_inference_steps: int, guidance_scale: float = 0.0) -> Image.Image:
        """One composed image, seeded as `Backbone.generate` (a CPU generator): one subject whose box is the whole
        image draws what `Backbone.generate` draws with its adapter alone."""
        conds = self.encode_prompt(prompt, guidance_scale)
        image = self.sample(conds, torch.Generator().manual_seed(seed), num_inference_steps, 0, guidance_scale)
        return tensor_to_pil(image)[0]
