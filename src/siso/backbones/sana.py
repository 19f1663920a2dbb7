"""Sana (Efficient-Large-Model/Sana_1600M_512px): linear-attention DiT denoiser, DC-AE latents, Gemma-2 text encoder.

The sampler is the model's own ``DPMSolverMultistepScheduler`` (DPM-Solver++ with flow sigmas, order 2, flow shift 3),
driven step by step as ``SanaPipeline.__call__`` drives it; editing's is Euler on the same flow sigmas (`FlowSampler`).
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from diffusers import SanaPipeline

from siso.backbones.base import Backbone
from siso.backbones.sampler import FlowSampler, Rollout

# SanaPipeline.__call__'s default that its encode_prompt lacks: the instruction that prefixes every prompt (Sana's
# "complex human instruction").
COMPLEX_HUMAN_INSTRUCTION = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
# Prompt tokens kept after the instruction (the reference code's value; the pipeline's own default is 300).
MAX_SEQUENCE_LENGTH = 256


class SanaBackbone(Backbone):
    """Sana pipelines: ``SanaTransformer2DModel`` on DC-AE latents, classifier-free guidance, multistep DPM-Solver.

    Gemma-2 stays frozen: there is no text-encoder LoRA. `decode` is the base class's (``latents / scaling_factor``
    through the DC-AE decoder, as the pipeline); `encode` is its inverse. Editing denoises with Euler steps on the
    scheduler's flow sigmas (`edit_sampler`). The default resolution of a local folder is the model's native size,
    ``sample_size * vae_scale_factor`` (512 px for Sana_1600M_512px: the size the stock pipeline's resolution
    binning renders a square image at, whatever its ``height``/``width``).
    """

    pipeline_class = SanaPipeline
    denoiser_name = "transformer"
    # exactly `resolution` (no binning), 256 prompt tokens
    pipeline_call_kwargs: ClassVar[dict] = {"use_resolution_binning": False, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    lora_targets = ("to_q", "to_k", "to_v")  # self- and cross-attention (METHOD.md Sec. 1)
    text_encoder_names = ()
    supports_editing = True
    # No IP-Adapter: diffusers has no IP-Adapter loader for Sana (SanaPipeline has no load_ip_adapter).
    # The reference code's Sana settings: 20 DPM-Solver steps with gradient through the last 3, CFG 4.5.
    defaults: ClassVar[dict[str, dict]] = {
        "optim": {
            "lr": 8e-4,
            "weight_decay": 1e-4,
            "num_inference_steps": 20,
            "grad_steps": 3,
            "guidance_scale": 4.5,
            "patience": 5,
        },
        # Editing's schedule (`siso.config.EditConfig`): Sana is no few-step model, so the edit redoes the last
        # int(20 * strength) of its 20 steps (15 at strength 0.75), not 3 of editing's default 4.
        "editing": {"optim": {"num_inference_steps": 20}},
    }

    def encode_prompt(self, prompt, guidance_scale=0.0):
        """Gemma-2 embeddings (B, 256, C) and their attention masks (B, 256); B = 2 (negative "" first) under CFG."""
        self.ensure_text_encoders()
        cfg = guidance_scale > 1.0
        embeds, mask, negative, negative_mask = self.pipe.encode_prompt(
            prompt,
            cfg,
            negative_prompt="",
            device=self.device,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            complex_human_instruction=COMPLEX_HUMAN_INSTRUCTION,
        )
        if cfg:
            embeds, mask = torch.cat([negative, embeds]), torch.cat([negative_mask, mask])
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    @torch.no_grad()
    def encode(self, images):
        """DC-AE encode, the inverse of `decode` (the DC-AE is deterministic: no posterior to take the mean of):
        images (B, 3, H, W) in [0, 1] -> latents (B, C, h, w) in model dtype."""
        vae = self.pipe.vae
        latents = vae.encode(images.to(self.device, vae.dtype) * 2 - 1).latent
        return (latents * vae.config.scaling_factor).to(self.dtype)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor, cond: dict, guidance_scale: float = 0.0) -> torch.Tensor:
        """The transformer's velocity (fp32) at timestep ``t`` for latents (1, C, h, w), with classifier-free guidance
        when the scale is above 1 (one batch of 2: unconditional, conditional)."""
        transformer = self.denoiser
        cfg = guidance_scale > 1.0
        model_input = torch.cat([latents] * 2) if cfg else latents
        velocity = transformer(
            model_input.to(transformer.dtype),
            encoder_hidden_states=cond["prompt_embeds"].to(transformer.dtype),
            encoder_attention_mask=cond["prompt_attention_mask"],
            timestep=t.expand(model_input.shape[0]) * transformer.config.timestep_scale,
            return_dict=False,
        )[0].float()
        if cfg:
            uncond, text = velocity.chunk(2)
            velocity = uncond + guidance_scale * (text - uncond)
        return velocity

    def rollout(self, cond, generator, num_inference_steps):
        pipe, scheduler = self.pipe, self.pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        # fp32 latents whatever the model dtype, as the pipeline keeps them.
        latents = pipe.prepare_latents(
            1, self.denoiser.config.in_channels, self.resolution, self.resolution, torch.float32, self.device, generator
        )

        def release():
            # DPM-Solver keeps the last model outputs for its multistep update: those of no-grad steps enter the
            # first grad steps as constants, those of grad steps carry their graph into the next step. Setting the
            # schedule again drops them, so the graph does not outlive the caller's use of the image.
            scheduler.set_timesteps(num_inference_steps, device=self.device)

        return Rollout(latents, scheduler.timesteps, scheduler, release=release)

    def predict(self, rollout, latents, i, cond, guidance_scale):
        return self.velocity(latents, rollout.timesteps[i], cond, guidance_scale)

    def edit_sampler(self, num_inference_steps, strength):
        """Euler steps on the flow sigmas and timesteps of Sana's own scheduler (``DPMSolverMultistepScheduler`` with
        ``use_flow_sigmas`` and ``flow_shift``, set to ``num_inference_steps`` on a copy, so the pipeline's stays as
        it was), the last ``int(steps * strength)`` of them, denoised by `velocity`.

        Editing does not denoise with `sample`'s multistep DPM-Solver++: its second-order update depends on the
        previous step's model output, so a step cannot be inverted on its own. The Euler step is the solver's
        first-order update on flow sigmas (``z + (sigma_next - sigma) * v``; DPM-Solver++'s own first step), so
        editing denoises with the steps the inversion inverts, at the levels generation visits.

        Raises:
            ValueError: as `siso.backbones.sampler.img2img_steps`.
        """
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        return FlowSampler(scheduler.timesteps, scheduler.sigmas, strength, self.velocity, self.dtype)
