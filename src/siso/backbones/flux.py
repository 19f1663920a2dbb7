"""FLUX backbones (FLUX.1-schnell): a rectified-flow MMDiT denoiser on packed latents, two text encoders."""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from siso.backbones.base import Backbone
from siso.backbones.sampler import FlowSampler, Rollout

# T5 prompt length: FLUX.1-schnell was distilled with 256 T5 tokens (the pipeline's default, 512, is FLUX.1-dev's),
# and the reference code samples with 256. The T5 tokens are padded to this length, so it changes the image.
MAX_SEQUENCE_LENGTH = 256
T5_CACHE_SIZE = 16  # prompts whose T5 embeddings are kept (4 MB each at 256 x 4096 fp32)


class FluxBackbone(Backbone):
    """``FluxPipeline`` models (FLUX.1-schnell).

    LoRA targets are the reference code's, which are diffusers' FLUX DreamBooth LoRA script's defaults: in the
    double-stream blocks the image and context ("add") attention projections and both feed-forwards; in the
    single-stream blocks that matches only the attention ``to_q``/``to_k``/``to_v`` (their fused MLP and output
    projections ``proj_mlp``/``proj_out`` are left frozen). The ``attn.`` prefix keeps the transformer's top-level
    ``proj_out`` and the norms' linears out. Only the CLIP-L text encoder may get LoRA; T5 stays frozen (as in the
    reference code).

    Latents are the pipeline's packed sequence ``(B, (h/2)*(w/2), 4*C)`` of 2x2 latent patches throughout; `decode`
    unpacks them.
    """

    pipeline_class = FluxPipeline
    denoiser_name = "transformer"
    # schnell's T5 length (the stock call defaults to 512 tokens)
    pipeline_call_kwargs: ClassVar[dict] = {"max_sequence_length": MAX_SEQUENCE_LENGTH}
    lora_targets = (
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.to_out.0",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )
    text_encoder_names = ("text_encoder",)
    supports_editing = True
    tiny_vae = "madebyollin/taef1"
    # No IP-Adapter yet: diffusers' FluxPipeline.load_ip_adapter takes its CLIP image encoder from another repo
    # (XLabs-AI/flux-ip-adapter ships none), which an adapter spec cannot name; the FLUX adapters were trained on
    # FLUX.1-dev, and their licences are non-commercial.
    # The reference code's FLUX settings (its README and siso_generation_flux.py).
    defaults: ClassVar[dict[str, dict]] = {
        "optim": {
            "lr": 2e-4,
            "weight_decay": 1e-4,
            "num_inference_steps": 1,
            "grad_steps": 1,
            "guidance_scale": 0.0,
            "patience": 7,
        },
        "lora": {"text_encoder_lr": 5e-6, "text_encoder_weight_decay": 1e-3},
    }

    def __init__(self, pipe: FluxPipeline, resolution: int | None = None, load_component=None):
        """
        Raises:
            ValueError: ``resolution`` is not a multiple of twice the VAE factor (the latents are packed in 2x2
                patches; the stock pipeline would silently round it down).
        """
        resolution = resolution or pipe.default_sample_size * pipe.vae_scale_factor
        if resolution % (2 * pipe.vae_scale_factor):
            raise ValueError(f"FLUX resolution must be a multiple of {2 * pipe.vae_scale_factor}, got {resolution}")
        super().__init__(pipe, resolution, load_component)
        self._t5_cache: dict[str, torch.Tensor] = {}

    def encode_prompt(self, prompt, guidance_scale=0.0):
        """CLIP-L pooled and T5 token embeddings, as the pipeline's ``encode_prompt`` makes them.

        T5 never gets LoRA, so its embeddings of a prompt are computed once and kept: with a CLIP LoRA the prompt
        is encoded every iteration, and T5 can stay parked meanwhile (`Backbone.park_text_encoders`). FLUX has no
        classifier-free guidance here (schnell is guidance-free), so ``guidance_scale`` plays no part.

        Returns:
            ``prompt_embeds`` (1, 256, D_t5), ``pooled_prompt_embeds`` (1, D_clip), ``text_ids`` (256, 3).
        """
        self.ensure_text_encoders("text_encoder")
        pooled = self.pipe._get_clip_prompt_embeds(prompt=[prompt], device=self.device, num_images_per_prompt=1)
        embeds = self._t5_embeddings(prompt)
        text_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.pipe.text_encoder.dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    @torch.no_grad()
    def _t5_embeddings(self, prompt: str) -> torch.Tensor:
        if prompt not in self._t5_cache:
            self.ensure_text_encoders("text_encoder_2")
            if len(self._t5_cache) >= T5_CACHE_SIZE:
                self._t5_cache.pop(next(iter(self._t5_cache)))
            self._t5_cache[prompt] = self.pipe._get_t5_prompt_embeds(
                prompt=[prompt], num_images_per_prompt=1, max_sequence_length=MAX_SEQUENCE_LENGTH, device=self.device
            )
        return self._t5_cache[prompt]

    def set_schedule(self, scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int) -> torch.Tensor:
        """Set ``scheduler`` to the pipeline's schedule: linear sigmas, shifted by the image length when the scheduler
        shifts dynamically (as ``FluxPipeline.__call__``).

        Returns:
            (n,) the timesteps; ``scheduler.sigmas`` holds their n + 1 levels, the last one 0.
        """
        config = scheduler.config
        mu = calculate_shift(
            (self.resolution // (2 * self.pipe.vae_scale_factor)) ** 2,  # the packed sequence's length
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, self.device, sigmas=sigmas, mu=mu)
        return timesteps

    def velocity(
        self, latents: torch.Tensor, t: torch.Tensor, cond: dict, guidance_scale: float, image_ids: torch.Tensor
    ) -> torch.Tensor:
        """The transformer's velocity at timestep ``t`` for packed ``latents`` (B, seq, 4C), in the latents' dtype.

        Args:
            guidance_scale: A model input for guidance-distilled transformers (FLUX.1-dev), unused by schnell.
            image_ids: (seq, 3) the latent patches' positions (``FluxPipeline.prepare_latents``'s).
        """
        guidance = None
        if self.denoiser.config.guidance_embeds:  # guidance-distilled FLUX.1-dev: the scale is a model input
            guidance = torch.full([1], guidance_scale, device=self.device, dtype=torch.float32)
        return self.denoiser(
            hidden_states=latents,
            timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=cond["text_ids"],
            img_ids=image_ids,
            return_dict=False,
        )[0]

    def rollout(self, cond, generator, num_inference_steps):
        pipe, scheduler = self.pipe, self.pipe.scheduler
        latents, image_ids = pipe.prepare_latents(
            1,
            self.denoiser.config.in_channels // 4,
            self.resolution,
            self.resolution,
            cond["prompt_embeds"].dtype,
            self.device,
            generator,
        )
        timesteps = self.set_schedule(scheduler, num_inference_steps)
        scheduler.set_begin_index(0)
        return Rollout(latents, timesteps, scheduler, extras={"image_ids": image_ids})

    def predict(self, rollout, latents, i, cond, guidance_scale):
        return self.velocity(latents, rollout.timesteps[i], cond, guidance_scale, rollout.extras["image_ids"])

    @property
    def latent_side(self):
        return self.resolution // (2 * self.pipe.vae_scale_factor)  # packed 2x2 patches per side

    def latent_layout(self, weights):
        """(1, side * side, 1): one weight per packed patch, in the packed sequence's (row-major) order."""
        return weights.reshape(1, -1, 1)

    def edit_sampler(self, num_inference_steps, strength):
        """Euler steps on packed latents, the last ``int(steps * strength)`` of `sample`'s schedule (`set_schedule`
        on a copy of the pipeline's scheduler, which stays as it was), denoised by `velocity`.

        Raises:
            ValueError: as `siso.backbones.sampler.img2img_steps`.
        """
        scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        timesteps = self.set_schedule(scheduler, num_inference_steps)
        side = self.resolution // (2 * self.pipe.vae_scale_factor)  # packed patches per side
        image_ids = self.pipe._prepare_latent_image_ids(1, side, side, self.device, self.dtype)
        velocity = functools.partial(self.velocity, image_ids=image_ids)
        return FlowSampler(timesteps, scheduler.sigmas, strength, velocity, self.dtype)

    def decode(self, latents):
        """VAE decode (differentiable): packed latents (B, (h/2)*(w/2), 4*C) -> images (B, 3, H, W) in [0, 1]."""
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(latents, self.resolution, self.resolution, self.pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images):
        """VAE encode (the posterior mean), the inverse of `decode`: images (B, 3, H, W) in [0, 1] -> packed latents
        (B, (h/2)*(w/2), 4*C) in model dtype."""
        vae = self.pipe.vae
        posterior = vae.encode(images.to(self.device, vae.dtype) * 2 - 1).latent_dist
        latents = (posterior.mean - vae.config.shift_factor) * vae.config.scaling_factor
        return self.pipe._pack_latents(latents, *latents.shape).to(self.dtype)
