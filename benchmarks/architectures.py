"""The published architectures, for the benchmark scripts: a thin layer over `siso.bench.architectures`, whose
``configs/*.json`` (shipped in the package, used by ``siso bench``) are the one source of the configs.

    .venv/bin/python benchmarks/architectures.py          # parameter counts per component
"""

from __future__ import annotations

import torch

from siso.bench.architectures import MODELS, build_component, build_similarity, published_config

ARCHITECTURES = MODELS
DENOISERS = {"sd-turbo": "unet", "sdxl-turbo": "unet", "flux-schnell": "transformer", "sana": "transformer"}


def build(name: str, device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """The model components of backbone ``name`` with random weights (fp32) on ``device``."""
    return {n: build_component(c, device, torch.float32) for n, c in published_config(name)["components"].items()}


def similarity_networks(device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """DINOv2-L (``dino``) and the CLIP ViT-H/14 vision tower (``ir``), random weights, fp32."""
    return build_similarity(device, torch.float32)


def parameter_counts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, int]]:
    """Per component: parameters in linear layers' weights (what --quantize converts) and all the others."""
    counts = {}
    for name, module in modules.items():
        total = sum(p.numel() for p in module.parameters())
        linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
        counts[name] = {"linear": linear, "other": total - linear}
    return counts


if __name__ == "__main__":
    for backbone in ARCHITECTURES:
        counts = parameter_counts(build(backbone))
        print(backbone, {k: f"{(v['linear'] + v['other']) / 1e6:.0f}M" for k, v in counts.items()})
