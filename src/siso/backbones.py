"""Diffusion backbones: a frozen diffusers pipeline plus the grad-enabled sampler the SISO loop needs.

The loop only uses the `Backbone` interface (`encode_prompt`, `sample`, `generate`, `decode`, the LoRA targets), so
a transformer denoiser with packed latents (FLUX, Sana) is added by writing another subclass and registering it,
without touching the loop. The sampler composes the pipeline's own parts (``encode_prompt``, ``prepare_latents``,
the denoiser, ``scheduler.step``) rather than copying the pipeline: diffusers' ``__call__`` runs under no-grad.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from siso.hub import ModelLoadError, load_pretrained
from siso.images import tensor_to_pil

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Backbone:
    """A frozen few-step text-to-image model.

    Attributes:
        pipe: The diffusers pipeline; its components are frozen (``requires_grad=False``).
        resolution: Image side in pixels (default: the stock pipeline's, ``sample_size * vae_scale_factor``).
        denoiser_name: Pipeline attribute of the denoiser that gets LoRA.
        lora_targets: Module names in the denoiser that get LoRA (METHOD.md Sec. 1).
        text_encoder_names: Pipeline attributes of the text encoders (optional LoRA).
        text_encoder_lora_targets: Module names in the text encoders that get LoRA.
    """

    pipeline_class: type[DiffusionPipeline]
    denoiser_name: str
    lora_targets: tuple[str, ...]
    text_encoder_names: tuple[str, ...]
    text_encoder_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP attention

    def __init__(self, pipe: DiffusionPipeline, resolution: int | None = None):
        self.pipe = pipe
        self.resolution = resolution or self.denoiser.config.sample_size * pipe.vae_scale_factor
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
        pipe.set_progress_bar_config(disable=True)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self.pipe, name) for name in self.text_encoder_names}

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def encode_prompt(self, prompt: str, guidance_scale: float = 0.0) -> dict[str, torch.Tensor]:
        """Text conditioning for `sample`; differentiable w.r.t. text-encoder LoRA when grad is enabled."""
        raise NotImplementedError

    def sample(
        self,
        cond: dict[str, torch.Tensor],
        generator: torch.Generator,
        num_inference_steps: int,
        grad_steps: int,
        guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """Generate one image, keeping the autograd graph of the last ``grad_steps`` steps and the VAE decode.

        With the same generator state, steps and guidance, this matches the stock pipeline's ``__call__``.

        Returns:
            Image tensor of shape (1, 3, H, W) in [0, 1].
        """
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode (differentiable): latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE encode (the posterior mean): images (B, 3, H, W) in [0, 1] -> latents (B, C, h, w) in model dtype."""
        vae = self.pipe.vae
        posterior = vae.encode(images.to(self.device, vae.dtype) * 2 - 1).latent_dist
        return (posterior.mean * vae.config.scaling_factor).to(self.dtype)

    def edit_sampler(self, num_inference_steps: int, strength: float) -> EditSampler:
        """The sampler that editing denoises with and inversion inverts (see `EditSampler`)."""
        raise NotImplementedError(f"{type(self).__name__} does not support editing yet")

    def denoise(
        self,
        sampler: EditSampler,
        latents: torch.Tensor,
        noises: list[torch.Tensor],
        cond: dict[str, torch.Tensor],
        grad_steps: int,
        guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """Denoise ``latents`` (at ``sampler.timesteps[0]``) through every step of ``sampler`` with the given per-step
        noises, keeping the autograd graph of the last ``grad_steps`` steps and the VAE decode.

        Returns:
            Image tensor of shape (1, 3, H, W) in [0, 1].
        """
        latents = latents.to(self.dtype)
        for i in range(len(sampler)):
            with nullcontext() if i >= len(sampler) - grad_steps else torch.no_grad():
                latents = sampler.step(sampler.predict(latents, i, cond, guidance_scale), i, latents, noises[i])
        return self.decode(latents)

    @torch.no_grad()
    def generate(self, prompt: str, seed: int, num_inference_steps: int, guidance_scale: float = 0.0) -> Image.Image:
        """Generate with the stock pipeline ``__call__`` (and whatever LoRA is loaded), seeded like diffusers.

        The seed drives a CPU ``torch.Generator`` for the initial latents and any sampler noise, so a stock pipeline
        called with ``generator=torch.Generator().manual_seed(seed)`` gives the same image.
        """
        latents = self.pipe(
            prompt=prompt,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
        ).images
        return tensor_to_pil(self.decode(latents))[0]


class EditSampler:
    """The last ``n`` steps of a ``num_inference_steps`` schedule (img2img's ``strength``), with explicit noise.

    Editing denoises the inverted latent of the input photo with these steps, and inversion runs them backwards. Both
    must use the *same* per-step noise for ancestral samplers, so `step` takes the noise as an argument instead of
    drawing it (ReNoise, Garibi et al. 2024). Steps are indexed ``0 .. n-1`` from the noisiest; step ``i`` goes from
    ``timesteps[i]`` to the next, less noisy level.

    Attributes:
        timesteps: (n,) the denoiser timesteps of the steps (e.g. 749, 499, 249 for 4 steps at strength 0.75).
    """

    timesteps: torch.Tensor

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
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        n = min(int(num_inference_steps * strength), num_inference_steps)  # as diffusers' img2img pipelines
        if n < 1:
            raise ValueError(
                f"strength {strength} with {num_inference_steps} steps leaves no denoising step; raise either"
            )
        scheduler.set_timesteps(num_inference_steps, device=backbone.device)
        begin = num_inference_steps - n
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

    def sample(self, cond, generator, num_inference_steps, grad_steps, guidance_scale=0.0):
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
        step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
        first_grad_step = num_inference_steps - grad_steps
        for i, t in enumerate(scheduler.timesteps):
            with nullcontext() if i >= first_grad_step else torch.no_grad():
                noise_pred = self.model_output(scheduler.scale_model_input(latents, t), t, cond, guidance_scale)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        return self.decode(latents)


class SDBackbone(UNetBackbone):
    """Stable Diffusion 1.x/2.x pipelines (SD-Turbo)."""

    pipeline_class = StableDiffusionPipeline
    text_encoder_names = ("text_encoder",)

    def encode_prompt(self, prompt, guidance_scale=0.0):
        cfg = guidance_scale > 1.0
        embeds, negative = self.pipe.encode_prompt(prompt, self.device, 1, cfg)
        return {"prompt_embeds": torch.cat([negative, embeds]) if cfg else embeds}


class SDXLBackbone(UNetBackbone):
    """Stable Diffusion XL pipelines (SDXL-Turbo)."""

    pipeline_class = StableDiffusionXLPipeline
    text_encoder_names = ("text_encoder", "text_encoder_2")

    def encode_prompt(self, prompt, guidance_scale=0.0):
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
        return {"prompt_embeds": embeds, "text_embeds": pooled, "time_ids": time_ids}

    def unet_kwargs(self, cond):
        return {
            "encoder_hidden_states": cond["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
        }


# Named backbones: name -> (Hub id, backbone class, resolution the model was distilled at).
BACKBONES: dict[str, tuple[str, type[Backbone], int]] = {
    "sdxl-turbo": ("stabilityai/sdxl-turbo", SDXLBackbone, 512),
    "sd-turbo": ("stabilityai/sd-turbo", SDBackbone, 512),
}
# Any diffusers directory or Hub repo whose model_index.json names one of these pipelines loads too.
FAMILIES: dict[str, type[Backbone]] = {
    "StableDiffusionPipeline": SDBackbone,
    "StableDiffusionXLPipeline": SDXLBackbone,
}


def resolve_model(model: str) -> tuple[str, type[Backbone], int | None]:
    """Map a backbone name, Hub id or local directory to (what to load, backbone class, default resolution).

    Raises:
        ModelLoadError: unknown name, missing directory, unsupported pipeline, or a Hub id not available offline.
    """
    if model in BACKBONES:
        return BACKBONES[model]
    path = Path(model).expanduser()
    if not path.is_dir() and (path.exists() or "/" not in model or model.startswith((".", "/", "~"))):
        raise ModelLoadError(
            f"unknown model {model!r}: use a backbone name ({', '.join(BACKBONES)}), a Hub id "
            "(org/name) or a local diffusers directory"
        )
    index = load_pretrained(DiffusionPipeline.load_config, model, "diffusion model")
    family = index.get("_class_name")
    if family not in FAMILIES:
        raise ModelLoadError(f"{model} is a {family}; supported pipelines: {', '.join(FAMILIES)}")
    return (str(path) if path.is_dir() else model), FAMILIES[family], None


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def usable_devices() -> list[str]:
    """The devices this torch build can use on this machine: cpu, each CUDA GPU, mps."""
    devices = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return [*devices, "mps"] if torch.backends.mps.is_available() else devices


def check_device(device: str) -> str:
    """Return ``device`` if this torch can use it; cheap, so callers check before loading any model.

    Raises:
        ValueError: not a torch device string, or a device this machine or torch build lacks (the message lists the
            usable ones).
    """
    usable = ", ".join(usable_devices())
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; usable here: {usable}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (parsed.index is None or parsed.index < count):
            return device
        if torch.version.cuda is None:
            reason = f"torch {torch.__version__} is built without CUDA"
        else:
            reason = f"{count} CUDA GPU(s) visible"
    elif parsed.type == "mps":
        if torch.backends.mps.is_available():
            return device
        reason = "MPS is not available"
    else:
        reason = f"siso does not run on {parsed.type}"
    raise ValueError(f"device {device!r} cannot be used ({reason}); usable here: {usable}")


def load_backbone(
    model: str = "sdxl-turbo", dtype: str = "fp32", device: str | None = None, resolution: int | None = None
) -> Backbone:
    """Load a frozen backbone.

    Args:
        model: Backbone name (``sdxl-turbo``, ``sd-turbo``), Hub id, or local diffusers directory.
        dtype: ``fp32``, ``bf16`` or ``fp16`` for the frozen weights.
        device: Torch device; ``None`` picks cuda, then mps, then cpu.
        resolution: Image side in pixels; ``None`` means 512 for the named turbo backbones, else the pipeline's
            default.

    Raises:
        ModelLoadError: the model cannot be found or is of an unsupported family.
        ValueError: this machine cannot use ``device``.
    """
    device = default_device() if device is None else check_device(device)
    source, cls, default_resolution = resolve_model(model)
    torch_dtype = TORCH_DTYPES[dtype]
    pipe = load_pretrained(cls.pipeline_class.from_pretrained, source, "diffusion model", dtype=torch_dtype)
    pipe.to(device)
    if torch_dtype == torch.float16 and isinstance(pipe, StableDiffusionXLPipeline) and pipe.vae.config.force_upcast:
        # The SDXL VAE overflows in fp16; the stock pipeline upcasts it for every decode, we keep it fp32.
        pipe.vae.to(torch.float32)
    return cls(pipe, resolution or default_resolution)
