"""Diffusion backbones: one module per family (`unet`, `flux`, `sana`) behind the `Backbone` interface
(`siso.backbones.base`), editing's samplers (`siso.backbones.sampler`), the registry that resolves and loads them
(`siso.backbones.registry`) and the denoiser's optional quantization (`siso.backbones.quantize`)."""

from siso.backbones.base import Backbone
from siso.backbones.flux import FluxBackbone
from siso.backbones.registry import (
    BACKBONES,
    FAMILIES,
    check_can_edit,
    check_ip_adapter,
    config_for,
    family,
    family_defaults,
    load_backbone,
    resolve_model,
)
from siso.backbones.sampler import EditSampler, FlowSampler
from siso.backbones.sana import SanaBackbone
from siso.backbones.unet import EulerSampler, SDBackbone, SDXLBackbone, UNetBackbone

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "Backbone",
    "EditSampler",
    "EulerSampler",
    "FlowSampler",
    "FluxBackbone",
    "SDBackbone",
    "SDXLBackbone",
    "SanaBackbone",
    "UNetBackbone",
    "check_can_edit",
    "check_ip_adapter",
    "config_for",
    "family",
    "family_defaults",
    "load_backbone",
    "resolve_model",
]
