"""The backbone registry: named backbones and pipeline families, model resolution, and loading a frozen backbone."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from siso.backbones.base import Backbone
from siso.backbones.flux import FluxBackbone
from siso.backbones.quantize import check_quantize, quantization_config
from siso.backbones.sana import SanaBackbone
from siso.backbones.unet import SDBackbone, SDXLBackbone
from siso.config import SisoConfig
from siso.devices import TORCH_DTYPES, check_device, default_device, own_cpu_memory, resolve_dtype
from siso.hub import ModelLoadError, load_pretrained

C = TypeVar("C", bound=SisoConfig)

# Named backbones: name -> (Hub id, backbone class, resolution the model was distilled at).
BACKBONES: dict[str, tuple[str, type[Backbone], int]] = {
    "sdxl-turbo": ("stabilityai/sdxl-turbo", SDXLBackbone, 512),
    "sd-turbo": ("stabilityai/sd-turbo", SDBackbone, 512),
    "flux-schnell": ("black-forest-labs/FLUX.1-schnell", FluxBackbone, 512),
    "sana": ("Efficient-Large-Model/Sana_1600M_512px_diffusers", SanaBackbone, 512),
}
# Any diffusers directory or Hub repo whose model_index.json names one of these pipelines loads too.
FAMILIES: dict[str, type[Backbone]] = {
    "StableDiffusionPipeline": SDBackbone,
    "StableDiffusionXLPipeline": SDXLBackbone,
    "FluxPipeline": FluxBackbone,
    "SanaPipeline": SanaBackbone,
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


def check_can_edit(model: str) -> None:
    """Raise ValueError when ``model``'s family cannot edit (before anything loads).

    Raises:
        ModelLoadError: as `resolve_model`.
    """
    if not resolve_model(model)[1].supports_editing:
        families = [name for name, (_, cls, _) in BACKBONES.items() if cls.supports_editing]
        raise ValueError(f"{model} cannot edit yet; editing works with {', '.join(families)} (or their families)")


def check_ip_adapter(model: str) -> None:
    """Raise ValueError when ``model``'s family takes no IP-Adapter (before anything loads); a model that cannot be
    resolved passes (its error is reported when it loads).

    Raises:
        ValueError: naming the families that take one.
    """
    cls = family(model)
    if cls is not None and cls.ip_adapter_weight is None:
        families = [name for name, (_, c, _) in BACKBONES.items() if c.ip_adapter_weight is not None]
        raise ValueError(
            f"{model} takes no IP-Adapter; a zero-shot start works with {', '.join(families)} (or its family)"
        )


def family(model: str) -> type[Backbone] | None:
    """The backbone class of ``model``; ``None`` for a model that cannot be resolved, whose error is reported when
    it loads (after the checks that need no model)."""
    try:
        return resolve_model(model)[1]
    except ModelLoadError:
        return None


def family_defaults(model: str) -> dict[str, dict]:
    """The settings a backbone family uses where they differ from `siso.config`'s (`Backbone.defaults`); none for a
    model that cannot be resolved."""
    cls = family(model)
    return cls.defaults if cls else {}


def config_for(cls: type[C], model: str, **overrides) -> C:
    """The configuration of ``model`` (a `SisoConfig` or `EditConfig`, as ``cls``) with its backbone family's
    defaults (`family_defaults`), then the caller's values (`SisoConfig.merged`).

    Args:
        cls: The kind of run's configuration, `siso.config.SisoConfig` or `siso.config.EditConfig`.
        model: Backbone name, Hub id or local diffusers directory; one that cannot be resolved gets no family
            defaults (its error comes when it loads).
        **overrides: As `SisoConfig.merged`: top-level fields, or per settings group a dict of fields or a settings
            object; ``None`` means "not given".

    Raises:
        TypeError: an unknown field or group.
        ValueError: a value the settings refuse.
    """
    return cls.merged(model, family_defaults(model), **overrides)


def load_backbone(
    model: str = "sdxl-turbo",
    dtype: str = "fp32",
    device: str | None = None,
    resolution: int | None = None,
    quantize: str | None = None,
) -> Backbone:
    """Load a frozen backbone.

    Args:
        model: Backbone name (``sdxl-turbo``, ``sd-turbo``, ``flux-schnell``, ``sana``), Hub id, or local diffusers
            directory.
        dtype: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (bf16 on CUDA, fp32 elsewhere) for the frozen weights.
        device: Torch device; ``None`` picks cuda, then mps, then cpu.
        resolution: Image side in pixels; ``None`` means 512 for the named backbones, else the pipeline's default.
        quantize: Quantize the denoiser's linear weights: ``int8`` or ``nf4`` (`siso.backbones.quantize`);
            ``None``: off.

    Raises:
        ModelLoadError: the model cannot be found or is of an unsupported family.
        ValueError: this machine cannot use ``device``, or cannot run ``quantize``.
    """
    device = default_device() if device is None else check_device(device)
    dtype = resolve_dtype(dtype, device)
    check_quantize(quantize, device)
    source, cls, default_resolution = resolve_model(model)
    torch_dtype = TORCH_DTYPES[dtype]
    kwargs = {}
    if quantize:
        from diffusers.quantizers import PipelineQuantizationConfig  # imports torchao and bitsandbytes when present

        config = quantization_config(quantize, torch_dtype)
        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping={cls.denoiser_name: config})
    pipe = load_pretrained(cls.pipeline_class.from_pretrained, source, "diffusion model", dtype=torch_dtype, **kwargs)
    pipe.to(device)
    own_cpu_memory(*(m for m in pipe.components.values() if isinstance(m, torch.nn.Module)))
    if torch_dtype == torch.float16 and isinstance(pipe, StableDiffusionXLPipeline) and pipe.vae.config.force_upcast:
        # The SDXL VAE overflows in fp16; the stock pipeline upcasts it for every decode, we keep it fp32.
        pipe.vae.to(torch.float32)
    component_classes = {name: type(module) for name, module in pipe.components.items()}

    def load_component(name: str) -> torch.nn.Module:
        """A text encoder freed by `Backbone.park_text_encoders`, loaded again as it was (never quantized)."""
        loader = component_classes[name].from_pretrained
        module = load_pretrained(loader, source, "diffusion model", subfolder=name, dtype=torch_dtype)
        own_cpu_memory(module)
        return module

    return cls(pipe, resolution or default_resolution, load_component)
