"""SD-family backbones (SD-Turbo, SDXL-Turbo): UNet denoiser, a diffusers Euler-family scheduler."""

from __future__ import annotations

import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from siso.backbones.base import Backbone
from siso.backbones.sampler import EditSampler, Rollout, img2img_steps


class EulerSampler(EditSampler):
    """Euler and Euler-ancestral steps of a diffusers ``Euler(Ancestral)DiscreteScheduler`` (k-diffusion sigmas).

    The update is the scheduler's own (``step`` gives the same result as ``scheduler.step`` when given the noise that
    the scheduler would draw; tested), written out here only so that the ancestral noise is an argument.
    """

    SCHEDULERS = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)

    def __init__(self, backbone: UNetBackbone, num_inference_steps: int, strength: float):
        scheduler = backbone.pipe.scheduler
        if not isinstance(scheduler, self.SCHEDULERS) or scheduler.config.prediction_type not in (
            "epsilon",
            "v_prediction",
        ):
            raise ValueError(
                f"editing supports Euler and Euler-ancestral schedulers with epsilon or v prediction; this model has "
                f"{type(scheduler).__name__} ({scheduler.config.prediction_type})"
            )
        begin = num_inference_steps - img2img_steps(num_inference_steps, strength)
        scheduler.set_timesteps(num_inference_steps, device=backbone.device)
        self.backbone = backbone
        self.ancestral = isinstance(scheduler, EulerAncestralDiscreteScheduler)
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        self.timesteps = scheduler.timesteps[begin:]
        self.sigmas = scheduler.sigmas[begin:]  # n + 1 levels, the last one 0

    def predict(self, latents, i, cond, guidance_scale=0.0):
        sigma = self.sigmas[i]
        model_input = latents / ((sigma**2 + 1) ** 0.5)
        output = self.backbone.model_output(model_input, self.timesteps[i], cond, guidance_scale)
        sample = latents.to(torch.float32)
        if self.v_prediction:
            denoised = output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            denoised = sample - sigma * output
        return (sample - denoised) / sigma

    def _levels(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma, sigma_down, sigma_up) of step i: deterministic Euler goes to the next level with no noise."""
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        if not self.ancestral:
            return sigma_from, sigma_to, torch.zeros_like(sigma_to)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        return sigma_from, (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up

    def step(self, direction, i, latents, noise):
        sigma, sigma_down, sigma_up = self._levels(i)
        next_latents = latents.to(torch.float32) + direction * (sigma_down - sigma)
        if self.ancestral:
            next_latents = next_latents + noise * sigma_up
        return next_latents.to(self.backbone.dtype)

    def invert_step(self, direction, i, next_latents, noise):
        sigma, sigma_down, sigma_up = self._levels(i)
        return next_latents.to(torch.float32) - direction * (sigma_down - sigma) - noise * sigma_up

    def noise_scale(self, i):
        return float(self._levels(i)[2])

    def add_noise(self, latents, noise, i):
        return latents.to(torch.float32) + self.sigmas[i] * noise


class UNetBackbone(Backbone):
    """SD-family models: UNet denoiser, epsilon/v prediction, a diffusers discrete-time scheduler."""

    denoiser_name = "unet"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    supports_editing = True

    def unet_kwargs(self, cond: dict[str, torch.Tensor]) -> dict:
        return {"encoder_hidden_states": cond["prompt_embeds"]}

    def model_output(
        self, model_input: torch.Tensor, t: torch.Tensor, cond: dict, guidance_scale: float = 0.0
    ) -> torch.Tensor:
        """The UNet's prediction for an already scaled input, with classifier-free guidance when scale > 1."""
        cfg = guidance_scale > 1.0
        output = self.denoiser(
            torch.cat([model_input] * 2) if cfg else model_input, t, **self.unet_kwargs(cond), return_dict=False
        )[0]
        if cfg:
            uncond, text = output.chunk(2)
            output = uncond + guidance_scale * (text - uncond)
        return output

    def edit_sampler(self, num_inference_steps, strength):
        return EulerSampler(self, num_inference_steps, strength)

    def rollout(self, cond, generator, num_inference_steps):
        pipe, scheduler = self.pipe, self.pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        latents = pipe.prepare_latents(
            1,
            self.denoiser.config.in_channels,
            self.resolution,
            self.resolution,
            cond["prompt_embeds"].dtype,
            self.device,
            generator,
        )
        return Rollout(latents, scheduler.timesteps, scheduler, pipe.prepare_extra_step_kwargs(generator, 0.0))

    def predict(self, rollout, latents, i, cond, guidance_scale):
        t = rollout.timesteps[i]
        return self.model_output(rollout.scheduler.scale_model_input(latents, t), t, cond, guidance_scale)


class SDBackbone(UNetBackbone):
    """Stable Diffusion 1.x/2.x pipelines (SD-Turbo)."""

    pipeline_class = StableDiffusionPipeline
    text_encoder_names = ("text_encoder",)
    tiny_vae = "madebyollin/taesd"
    # No IP-Adapter: h94/IP-Adapter has SD 1.5 and SDXL adapters, none for SD 2.x (SD-Turbo's 1024-d text space).

    def encode_prompt(self, prompt, guidance_scale=0.0):
        self.ensure_text_encoders()
        cfg = guidance_scale > 1.0
        embeds, negative = self.pipe.encode_prompt(prompt, self.device, 1, cfg)
        return {"prompt_embeds": torch.cat([negative, embeds]) if cfg else embeds}


class SDXLBackbone(UNetBackbone):
    """Stable Diffusion XL pipelines (SDXL-Turbo)."""

    pipeline_class = StableDiffusionXLPipeline
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tiny_vae = "madebyollin/taesdxl"
    # h94/IP-Adapter's SDXL adapter (Apache-2.0), whose image encoder (ViT-bigG) is sdxl_models/image_encoder.
    ip_adapter_weight = "sdxl_models/ip-adapter_sdxl.safetensors"

    def encode_prompt(self, prompt, guidance_scale=0.0):
        self.ensure_text_encoders()
        cfg = guidance_scale > 1.0
        embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg
        )
        size = (self.resolution, self.resolution)
        time_ids = self.pipe._get_add_time_ids(
            size,
            (0, 0),
            size,
            dtype=embeds.dtype,
            text_encoder_projection_dim=self.pipe.text_encoder_2.config.projection_dim,
        ).to(self.device)
        if cfg:
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        cond = {"prompt_embeds": embeds, "text_embeds": pooled, "time_ids": time_ids}
        if self.ip_adapter is not None:  # per adapter (1 or 2, n_images, D), batched like the prompt
            cond["image_embeds"] = self.ip_adapter_embeds(guidance_scale)
        return cond

    def unet_kwargs(self, cond):
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
        if "image_embeds" in cond:  # the IP-Adapter's, as the stock pipeline passes them
            added["image_embeds"] = cond["image_embeds"]
        return {"encoder_hidden_states": cond["prompt_embeds"], "added_cond_kwargs": added}
