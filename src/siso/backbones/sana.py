"""Sana (Efficient-Large-Model/Sana_1600M_512px): linear-attention DiT denoiser, DC-AE latents, Gemma-2 text encoder.

The sampler is the model's own ``DPMSolverMultistepScheduler`` (DPM-Solver++ with flow sigmas, order 2, flow shift 3),
driven step by step as ``SanaPipeline.__call__`` drives it.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from typing import ClassVar

import torch
from diffusers import SanaPipeline

from siso.backbones.base import Backbone

# SanaPipeline.__call__'s default that its encode_prompt lacks: the instruction that prefixes every prompt (Sana's
# "complex human instruction").
COMPLEX_HUMAN_INSTRUCTION = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
# Prompt tokens kept after the instruction (the reference code's value; the pipeline's own default is 300).
MAX_SEQUENCE_LENGTH = 256


class SanaBackbone(Backbone):
    """Sana pipelines: ``SanaTransformer2DModel`` on DC-AE latents, classifier-free guidance, multistep DPM-Solver.

    Gemma-2 stays frozen: there is no text-encoder LoRA. `decode` is the base class's (``latents / scaling_factor``
    through the DC-AE decoder, as the pipeline). The default resolution of a local folder is the model's native size,
    ``sample_size * vae_scale_factor`` (512 px for Sana_1600M_512px: the size the stock pipeline's resolution
    binning renders a square image at, whatever its ``height``/``width``).
    """

    pipeline_class = SanaPipeline
    denoiser_name = "transformer"
    # exactly `resolution` (no binning), 256 prompt tokens
    pipeline_call_kwargs: ClassVar[dict] = {"use_resolution_binning": False, "max_sequence_length": MAX_SEQUENCE_LENGTH}
    lora_targets = ("to_q", "to_k", "to_v")  # self- and cross-attention (METHOD.md Sec. 1)
    text_encoder_names = ()
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
        }
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

    def sample(self, cond, generator, num_inference_steps, grad_steps, guidance_scale=0.0):
        pipe, scheduler, transformer = self.pipe, self.pipe.scheduler, self.denoiser
        cfg = guidance_scale > 1.0
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        # fp32 latents whatever the model dtype, as the pipeline keeps them.
        latents = pipe.prepare_latents(
            1, transformer.config.in_channels, self.resolution, self.resolution, torch.float32, self.device, generator
        )
        embeds = cond["prompt_embeds"].to(transformer.dtype)
        first_grad_step = num_inference_steps - grad_steps
        for i, t in enumerate(scheduler.timesteps):
            # DPM-Solver keeps the last model outputs for its multistep update: those of no-grad steps enter the
            # first grad steps as constants, those of grad steps carry their graph into the next step.
            with nullcontext() if i >= first_grad_step else torch.no_grad():
                model_input = torch.cat([latents] * 2) if cfg else latents
                velocity = transformer(
                    model_input.to(transformer.dtype),
                    encoder_hidden_states=embeds,
                    encoder_attention_mask=cond["prompt_attention_mask"],
                    timestep=t.expand(model_input.shape[0]) * transformer.config.timestep_scale,
                    return_dict=False,
                )[0].float()
                if cfg:
                    uncond, text = velocity.chunk(2)
                    velocity = uncond + guidance_scale * (text - uncond)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        # Drop the scheduler's references to this rollout's model outputs: they hold the graph of the last steps,
        # which would otherwise stay alive after the caller is done with the image.
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        return self.decode(latents)
