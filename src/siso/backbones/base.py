"""The backbone interface: a frozen diffusers pipeline plus the grad-enabled sampling the SISO loop needs.

The loop only uses `Backbone` (`encode_prompt`, `sample`, `generate`, `decode`, the LoRA targets) and, for editing,
its `EditSampler` (`siso.backbones.sampler`), so a transformer denoiser with packed latents (FLUX, Sana) is added by
writing another subclass and registering it, without touching the loop. Samplers compose the pipeline's own parts
(``encode_prompt``, ``prepare_latents``, the denoiser, ``scheduler.step``) rather than copying the pipeline:
diffusers' ``__call__`` runs under no-grad.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, ClassVar

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from siso.backbones.sampler import EditSampler, Rollout
from siso.devices import own_cpu_memory
from siso.hub import load_pretrained
from siso.images import tensor_to_pil

if TYPE_CHECKING:
    from siso.config import IPAdapterSettings


class Backbone:
    """A frozen few-step text-to-image model.

    Attributes:
        pipe: The diffusers pipeline; its components are frozen (``requires_grad=False``).
        resolution: Image side in pixels (default: the stock pipeline's, ``sample_size * vae_scale_factor``).
        denoiser_name: Pipeline attribute of the denoiser that gets LoRA.
        lora_targets: Module names in the denoiser that get LoRA (METHOD.md Sec. 1).
        text_encoder_names: Pipeline attributes of the text encoders (optional LoRA).
        text_encoder_lora_targets: Module names in the text encoders that get LoRA.
        supports_editing: Whether the family implements `edit_sampler` (checked before any model loads).
        tiny_vae: Hub id of the family's ``AutoencoderTiny`` (the fast loss's decoder, `siso.losses.tiny_vae`);
            ``None``: none.
        defaults: The family's own settings where they differ from `siso.config`'s (the reference code's values), as
            ``{"optim": {"lr": 2e-4, ...}, "lora": {...}}``; command-line flags override them, and config.json
            records what was used. An ``"editing"`` entry of the same form holds what an editing run takes instead
            (`siso.config.EditConfig`, whose schedule is otherwise its own 4 steps, not generation's): Sana's
            ``{"optim": {"num_inference_steps": 20}}``.
        ip_adapter_weight: The family's default IP-Adapter weight file, with its subfolder in the adapter's repo
            (`load_ip_adapter`); ``None``: the family takes no IP-Adapter (refused before anything loads).
        ip_adapter: The loaded IP-Adapter's settings, its weight file filled in (`load_ip_adapter`); ``None``: none.
        ip_adapter_images: The adapter's images (RGB), what every denoising step is conditioned on.
    """

    pipeline_class: type[DiffusionPipeline]
    denoiser_name: str
    lora_targets: tuple[str, ...]
    text_encoder_names: tuple[str, ...]
    text_encoder_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP attention
    defaults: ClassVar[dict[str, dict]] = {}
    supports_editing: ClassVar[bool] = False  # whether `edit_sampler` is implemented
    tiny_vae: ClassVar[str | None] = None
    # Extra arguments of the stock ``__call__`` that `generate` needs to draw what `sample` draws.
    pipeline_call_kwargs: ClassVar[dict] = {}
    ip_adapter_weight: ClassVar[str | None] = None

    def __init__(
        self,
        pipe: DiffusionPipeline,
        resolution: int | None = None,
        load_component: Callable[[str], torch.nn.Module] | None = None,
    ):
        """
        Args:
            pipe: The pipeline (moved to its device).
            resolution: Image side in pixels.
            load_component: Loads a pipeline component again by name (`siso.backbones.load_backbone` passes one);
                without it a text encoder is never freed (`park_text_encoders` on the CPU keeps it).
        """
        self.pipe = pipe
        self.resolution = resolution or self.denoiser.config.sample_size * pipe.vae_scale_factor
        self.load_component = load_component
        self._parked: set[str] = set()  # text encoders out of the device's memory (on the CPU, or freed)
        self.ip_adapter: IPAdapterSettings | None = None
        self.ip_adapter_images: list[Image.Image] = []
        self._ip_adapter_embeds: list[torch.Tensor] | None = None  # per adapter (2, n_images, D): (uncond, cond)
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
    def all_text_encoder_names(self) -> tuple[str, ...]:
        """Every text encoder of the pipeline, with LoRA or without (`text_encoder_names` are those that may get it)."""
        names = [name for name in self.pipe.components if name.startswith("text_encoder")]
        return tuple(name for name in names if name in self._parked or getattr(self.pipe, name) is not None)

    def park_text_encoders(self, keep: Collection[str] = ()) -> list[str]:
        """Take the text encoders not in ``keep`` out of the compute device's memory until `ensure_text_encoders`.

        From an accelerator they move to CPU RAM; when the device is the CPU they are freed (and loaded again from
        the model when a prompt needs them), provided the backbone can reload them (``load_component``).

        Returns:
            The names parked by this call.
        """
        parked = []
        on_cpu = self.device.type == "cpu"
        for name in self.all_text_encoder_names:
            if name in keep or name in self._parked or (on_cpu and self.load_component is None):
                continue
            if on_cpu:
                self.pipe.register_modules(**{name: None})
            else:
                getattr(self.pipe, name).to("cpu")
            self._parked.add(name)
            parked.append(name)
        if parked and self.device.type == "cuda":
            torch.cuda.empty_cache()
        return parked

    def ensure_text_encoders(self, *names: str) -> None:
        """Bring parked text encoders (``names``, or all) back to the compute device; they stay there."""
        for name in names or tuple(self._parked):
            if name not in self._parked:
                continue
            module = getattr(self.pipe, name)
            if module is None:
                module = self.load_component(name)
                module.requires_grad_(False)
                self.pipe.register_modules(**{name: module})
            module.to(self.device)
            self._parked.discard(name)

    def enable_gradient_checkpointing(self) -> list[str]:
        """Recompute activations in the backward pass: the denoiser's, and the VAE's where diffusers supports it
        (``AutoencoderKL`` does, Sana's ``AutoencoderDC`` does not). Images and gradients are unchanged.

        Returns:
            The pipeline components that checkpoint.
        """
        names = [self.denoiser_name, "vae"]
        names = [name for name in names if getattr(self.pipe, name)._supports_gradient_checkpointing]
        for name in names:
            getattr(self.pipe, name).enable_gradient_checkpointing()
        return names

    @contextmanager
    def gradient_checkpointing(self) -> Iterator[list[str]]:
        """`enable_gradient_checkpointing` inside the block; after it, checkpointing is off again on the components
        it turned on (one that checkpointed before keeps it), so that a backbone used again runs as it did.

        Yields:
            The pipeline components that checkpoint inside the block.
        """
        before = {name for name in (self.denoiser_name, "vae") if getattr(self.pipe, name).is_gradient_checkpointing}
        names = self.enable_gradient_checkpointing()
        try:
            yield names
        finally:
            for name in names:
                if name not in before:
                    getattr(self.pipe, name).disable_gradient_checkpointing()

    @contextmanager
    def channels_last_vae(self):
        """Run the VAE in channels-last memory layout inside the block (its decode forward + backward is ~1.16x
        faster on a CPU at 256 px; convolution kernels then differ, so images may differ by float rounding), and
        in the stock layout again after it, so that `generate` matches a stock pipeline exactly."""
        vae = self.pipe.vae
        vae.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            vae.to(memory_format=torch.contiguous_format)

    @contextmanager
    def decoding_with(self, vae: torch.nn.Module):
        """`decode` (and so `sample`) decodes with ``vae`` inside the block (the fast loss's tiny decoder), with the
        pipeline's own VAE again after it."""
        stock = self.pipe.vae
        self.pipe.vae = vae  # diffusers re-registers the component; setting the stock one back restores its config
        try:
            yield
        finally:
            self.pipe.vae = stock

    def load_ip_adapter(self, settings: IPAdapterSettings, photos: Sequence[Image.Image]) -> None:
        """Load a frozen IP-Adapter (Ye et al. 2023) with diffusers' own ``pipe.load_ip_adapter`` and
        ``set_ip_adapter_scale``, and condition every denoising step on ``photos`` from now on.

        The photos are one adapter's image list (diffusers' ``ip_adapter_image=[[photo1, photo2]]``), embedded once
        with the pipeline's ``prepare_ip_adapter_image_embeds``, unconditional half included for classifier-free
        guidance. `encode_prompt`'s conditioning carries the embeddings to the denoiser, and `generate` passes them
        to the stock call. The image encoder is dropped from the pipeline after that (SDXL's ViT-bigG is 2.5 GB the
        embeddings no longer need). The adapter goes in before any LoRA: its loader replaces the attention
        processors, and peft's targets (``to_q``, ``to_k``, ...) do not match its ``to_k_ip``/``to_v_ip``.

        Args:
            settings: The adapter; its ``weight_name`` ``None`` means the family's `ip_adapter_weight`. An h94
                ``*vit-h*`` file takes the ViT-H image encoder of h94's ``models/image_encoder``, any other the
                ``image_encoder`` folder beside the file.
            photos: The subject's photos (at least one).

        Raises:
            ValueError: the family takes no IP-Adapter, or the backbone already carries an IP-Adapter or LoRA.
            ModelLoadError: the adapter or its image encoder cannot be loaded.
        """
        if self.ip_adapter_weight is None:
            raise ValueError(f"{type(self).__name__} takes no IP-Adapter")
        if self.ip_adapter is not None or getattr(self.denoiser, "peft_config", None):
            raise ValueError("load the IP-Adapter once, into a backbone without LoRA")
        if not photos:
            raise ValueError("the IP-Adapter needs at least one photo")
        weight = settings.weight_name or self.ip_adapter_weight
        subfolder, _, file = weight.rpartition("/")
        self._own_processors = dict(self.denoiser.attn_processors)  # what `unload_ip_adapter` puts back
        # The loader casts the denoiser to its own dtype and warns about that (listing no module): noise for users.
        verbosity = diffusers.utils.logging.get_verbosity()
        diffusers.utils.logging.set_verbosity_error()
        try:
            load_pretrained(
                self.pipe.load_ip_adapter,
                settings.model,
                "IP-Adapter",
                subfolder=subfolder,
                weight_name=file,
                image_encoder_folder="models/image_encoder" if "vit-h" in file else "image_encoder",
            )
        finally:
            diffusers.utils.logging.set_verbosity(verbosity)
        own_cpu_memory(self.denoiser, self.pipe.image_encoder)  # aligned, as load_backbone's: same numbers each load
        self.denoiser.requires_grad_(False)  # the adapter's new layers come trainable
        self.pipe.set_ip_adapter_scale(settings.scale)
        photos = [photo.convert("RGB") for photo in photos]
        with torch.no_grad():
            self._ip_adapter_embeds = self.pipe.prepare_ip_adapter_image_embeds([photos], None, self.device, 1, True)
        self.pipe.register_modules(image_encoder=None)
        self.ip_adapter = dataclasses.replace(settings, weight_name=weight)
        self.ip_adapter_images = photos

    def unload_ip_adapter(self) -> None:
        """Take the IP-Adapter off with diffusers' own ``pipe.unload_ip_adapter``, and put back the attention
        processors the denoiser had before `load_ip_adapter` (diffusers' unloader sets its default ones).

        Raises:
            ValueError: the backbone carries LoRA (take it off first: peft wraps the layers the adapter replaced).
        """
        if self.ip_adapter is None:
            return
        if getattr(self.denoiser, "peft_config", None):
            raise ValueError("take the LoRA off before the IP-Adapter")
        self.pipe.unload_ip_adapter()
        self.denoiser.set_attn_processor(self._own_processors)
        self.ip_adapter, self.ip_adapter_images, self._ip_adapter_embeds = None, [], None

    def ip_adapter_embeds(self, guidance_scale: float = 0.0) -> list[torch.Tensor] | None:
        """The IP-Adapter's image embeddings as the denoiser takes them: per adapter a tensor of shape
        (B, n_images, D), B = 2 (unconditional, conditional) with classifier-free guidance (scale > 1), else 1;
        ``None`` without an adapter."""
        if self._ip_adapter_embeds is None:
            return None
        return [e if guidance_scale > 1.0 else e.chunk(2)[1] for e in self._ip_adapter_embeds]

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def encode_prompt(self, prompt: str, guidance_scale: float = 0.0) -> dict[str, torch.Tensor]:
        """Text conditioning for `sample` (with the IP-Adapter's image embeddings, when one is loaded); differentiable
        w.r.t. text-encoder LoRA when grad is enabled."""
        raise NotImplementedError

    def rollout(self, cond: dict[str, torch.Tensor], generator: torch.Generator, num_inference_steps: int) -> Rollout:
        """Set the pipeline's scheduler to ``num_inference_steps`` and draw the initial latents from ``generator``, as
        the stock ``__call__`` does before its first step."""
        raise NotImplementedError

    def predict(
        self, rollout: Rollout, latents: torch.Tensor, i: int, cond: dict[str, torch.Tensor], guidance_scale: float
    ) -> torch.Tensor:
        """The denoiser's output at step ``i`` of ``rollout`` for ``latents`` (with classifier-free guidance when the
        scale is above 1), what ``rollout.step`` takes."""
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
        rollout = self.rollout(cond, generator, num_inference_steps)
        latents = rollout.latents
        first_grad_step = num_inference_steps - grad_steps
        for i in range(len(rollout)):
            with nullcontext() if i >= first_grad_step else torch.no_grad():
                latents = rollout.step(self.predict(rollout, latents, i, cond, guidance_scale), i, latents)
        rollout.release()
        return self.decode(latents)

    @property
    def latent_side(self) -> int:
        """Cells per side of the denoiser's output grid (a latent pixel; FLUX: a packed 2x2 patch)."""
        return self.resolution // self.pipe.vae_scale_factor

    def latent_layout(self, weights: torch.Tensor) -> torch.Tensor:
        """Per-cell weights (side, side) of the `latent_side` grid as a tensor that broadcasts over the denoiser's
        output: (1, 1, side, side)."""
        return weights[None, None]

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
        raise ValueError(f"{type(self).__name__} does not support editing yet")

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
        """Generate with the stock pipeline ``__call__`` (and whatever LoRA and IP-Adapter are loaded), seeded like
        diffusers.

        The seed drives a CPU ``torch.Generator`` for the initial latents and any sampler noise, so a stock pipeline
        called with ``generator=torch.Generator().manual_seed(seed)`` gives the same image.
        """
        self.ensure_text_encoders()
        embeds = self.ip_adapter_embeds(guidance_scale)
        ip_adapter = {} if embeds is None else {"ip_adapter_image_embeds": embeds}
        latents = self.pipe(
            prompt=prompt,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **self.pipeline_call_kwargs,
            **ip_adapter,
        ).images
        return tensor_to_pil(self.decode(latents))[0]
