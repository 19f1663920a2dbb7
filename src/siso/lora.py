"""LoRA adapters through peft, saved and loaded with diffusers' own LoRA I/O.

A saved subject is a folder with ``pytorch_lora_weights.safetensors`` (with peft adapter metadata) that a stock
``pipe.load_lora_weights(folder)`` loads, plus ``siso_subject.json`` naming the backbone it was learned on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from siso.backbones import Backbone
from siso.config import LoraSettings

ADAPTER = "default"
SUBJECT_FILE = "siso_subject.json"

LoraSnapshot = dict[str, dict[str, torch.Tensor]]


def add_lora(backbone: Backbone, settings: LoraSettings) -> dict[str, torch.nn.Module]:
    """Add zero-initialised LoRA adapters (B = 0, so the model is unchanged) and make only them trainable.

    Returns:
        Pipeline component name -> module that carries an adapter (the denoiser, then any text encoders).

    Raises:
        ValueError: the backbone already carries a LoRA adapter.
    """
    modules = {backbone.denoiser_name: backbone.denoiser}
    if settings.train_text_encoder:
        modules.update(backbone.text_encoders)
    for name, module in modules.items():
        if getattr(module, "peft_config", None):
            raise ValueError(f"{name} already has a LoRA adapter; load a fresh backbone for a new subject")
        targets = backbone.lora_targets if module is backbone.denoiser else backbone.text_encoder_lora_targets
        module.add_adapter(
            LoraConfig(
                r=settings.rank, lora_alpha=settings.lora_alpha, init_lora_weights=True, target_modules=list(targets)
            ),
            adapter_name=ADAPTER,
        )
    # Adam state and updates in fp32 even when the frozen weights are bf16/fp16.
    cast_training_params(list(modules.values()), dtype=torch.float32)
    return modules


def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def snapshot(modules: dict[str, torch.nn.Module]) -> LoraSnapshot:
    """A detached copy of the LoRA weights (not a view: later optimizer steps do not change it)."""
    return {name: {k: p.detach().clone() for k, p in trainable(m).items()} for name, m in modules.items()}


@torch.no_grad()
def restore(modules: dict[str, torch.nn.Module], snap: LoraSnapshot) -> None:
    """Write a `snapshot` back into the adapters."""
    for name, module in modules.items():
        for key, param in trainable(module).items():
            param.copy_(snap[name][key])


def save_lora(backbone: Backbone, modules: dict[str, torch.nn.Module], directory: str | Path, **subject_info) -> Path:
    """Save the current adapters with ``<Pipeline>.save_lora_weights`` so a stock pipeline loads them.

    Args:
        modules: As returned by `add_lora`.
        directory: Output folder (created).
        subject_info: Extra JSON-serialisable facts written to ``siso_subject.json`` (model, prompt, ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    for name, module in modules.items():
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
        kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config[ADAPTER].to_dict()
    type(backbone.pipe).save_lora_weights(directory, **kwargs)
    info = {"resolution": backbone.resolution, **subject_info}
    (directory / SUBJECT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return directory


def read_subject_info(directory: str | Path) -> dict:
    """The ``siso_subject.json`` of a saved subject ({} for a LoRA folder siso did not write)."""
    path = Path(directory) / SUBJECT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
