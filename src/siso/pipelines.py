"""The caller's own diffusers pipeline, borrowed by `siso.personalize`: its family, the checks before siso touches it,
and the contexts that give it back as it was (`one_device`, `kept`, `learning`)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate.hooks import CpuOffload
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from peft.tuners.tuners_utils import BaseTunerLayer

from siso.backbones import FAMILIES, Backbone


def pipeline_family(pipe: DiffusionPipeline) -> type[Backbone]:
    """The backbone class of ``pipe``'s family (`siso.backbones.FAMILIES`).

    Raises:
        ValueError: a pipeline of no family siso learns on.
    """
    for cls in FAMILIES.values():
        if isinstance(pipe, cls.pipeline_class):
            return cls
    raise ValueError(f"a {type(pipe).__name__} cannot be personalized; siso takes {', '.join(FAMILIES)}")


def components(pipe) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def has_ip_adapter(pipe) -> bool:
    denoiser = getattr(pipe, pipeline_family(pipe).denoiser_name)
    return isinstance(getattr(denoiser, "encoder_hid_proj", None), MultiIPAdapterImageProjection)


def check_lora(pipe, adapter_name: str) -> None:
    """Refuse an adapter name in use (or that peft cannot take), and disabled or fused LoRA."""
    if not adapter_name or "." in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty name without '.', got {adapter_name!r}")
    modules = components(pipe).values()
    if any(adapter_name in getattr(m, "peft_config", {}) for m in modules):
        raise ValueError(f"the pipeline has an adapter {adapter_name!r}: pass another adapter_name, or delete it first")
    layers = [layer for m in modules for layer in m.modules() if isinstance(layer, BaseTunerLayer)]
    if any(layer.disable_adapters for layer in layers):
        raise ValueError("the pipeline's LoRA is disabled (disable_lora()): pipe.enable_lora() first")
    if any(layer.merged for layer in layers):
        raise ValueError("the pipeline's LoRA is fused (fuse_lora()): pipe.unfuse_lora() first")


def take_off(pipe, adapter_name: str) -> None:
    """Remove the adapter ``adapter_name``, leaving the others as they were (and no LoRA layers when it was alone)."""
    if any(set(getattr(m, "peft_config", {})) - {adapter_name} for m in components(pipe).values()):
        pipe.delete_adapters(adapter_name)
    else:
        pipe.unload_lora_weights()


@contextmanager
def one_device(pipe) -> Iterator[None]:
    """The pipeline on one device inside the block: under model CPU offload, its hooks are removed and the pipeline
    moved to the offload's execution device, and the offload enabled again after (``enable_model_cpu_offload`` on the
    same device, as diffusers' ``maybe_free_model_hooks`` does after every call). LoRA learning cannot run under the
    hooks: they move a component to the CPU when the next one runs, before its backward.

    Raises:
        ValueError: a device map, sequential or group offload, or components on several devices.
    """
    modules = components(pipe)
    hooks = [m._hf_hook for m in modules.values() if hasattr(m, "_hf_hook")]
    if pipe.hf_device_map is not None:
        raise ValueError("a pipeline with a device map cannot be personalized: pipe.reset_device_map() first")
    if pipe._maybe_raise_error_if_group_offload_active() or any(not isinstance(h, CpuOffload) for h in hooks):
        raise ValueError("sequential and group offload are not supported: use pipe.enable_model_cpu_offload()")
    if not hooks:
        devices = {p.device for m in modules.values() for p in m.parameters()}
        if len(devices) > 1:
            raise ValueError(f"the pipeline is on {', '.join(map(str, devices))}: pipe.to(device) onto one first")
        yield
        return
    device = pipe._offload_device
    pipe.remove_all_hooks()
    try:
        pipe.to(device, silence_dtype_warnings=True)
        yield
    finally:
        pipe.enable_model_cpu_offload(device=device)


@contextmanager
def kept(pipe) -> Iterator[None]:
    """Every component parameter's ``requires_grad`` and the progress-bar config as they were after the block
    (`Backbone` freezes the components and hides the bar); parameters made in the block (a new adapter's) are left
    trainable, as a stock ``load_lora_weights`` leaves them."""
    flags = {p: p.requires_grad for m in components(pipe).values() for p in m.parameters()}
    bar = pipe.__dict__.get("_progress_bar_config")
    try:
        yield
    finally:
        for m in components(pipe).values():
            for p in m.parameters():
                p.requires_grad_(flags.get(p, True))
        if bar is None:
            pipe.__dict__.pop("_progress_bar_config", None)
        else:
            pipe._progress_bar_config = bar


@contextmanager
def learning(pipe) -> Iterator[None]:
    """Inside the block the pipeline samples with a copy of its scheduler (whose state the learning advances), and a
    float16 SDXL VAE that must upcast decodes in float32 (as the stock call does); after it, the scheduler object is
    the caller's again and the VAE in its dtype and memory layout (the learning runs it channels-last)."""
    scheduler, vae = pipe.scheduler, pipe.vae
    dtype = vae.dtype
    channels_last = any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in vae.parameters()
    )
    pipe.scheduler = copy.deepcopy(scheduler)
    if isinstance(pipe, StableDiffusionXLPipeline) and dtype == torch.float16 and vae.config.force_upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        pipe.scheduler = scheduler
        if vae.dtype != dtype:
            vae.to(dtype)
        if channels_last:
            vae.to(memory_format=torch.channels_last)
