"""Several LoRA adapters on one model: which are active, and which one learns.

peft and diffusers keep an active set per LoRA layer; their switches also change what requires gradients (peft's
``set_adapter``) or the adapters' weights (diffusers' ``set_adapters``). A caller's pipeline (`siso.personalize`) and a
polish of saved subjects (`siso.compose.regional`) need the active set alone changed, so these set it on the layers
and keep the rest as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from siso.backbones import Backbone
from siso.config import LoraSettings
from siso.lora import ADAPTER, add_lora


def stack_lora(backbone: Backbone, settings: LoraSettings, adapter: str = ADAPTER) -> dict[str, torch.nn.Module]:
    """`add_lora`, with the adapters each module had active kept active (frozen, at their weights) beside the new one,
    which alone is trainable: diffusers' ``add_adapter`` would leave only the new one active.

    Returns:
        As `add_lora`.
    """
    names = (backbone.denoiser_name, *backbone.text_encoder_names)
    before = {name: active_adapters(getattr(backbone.pipe, name)) for name in names}
    with warnings.catch_warnings():  # peft's note that a module carries several adapters: here they are meant to
        warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
        modules = add_lora(backbone, settings, adapter)
    for name, module in modules.items():
        if before[name]:
            activate(module, [*before[name], adapter])
    return modules


def active_adapters(module: torch.nn.Module | None) -> list[str]:
    """The LoRA adapters active in ``module`` (as diffusers' ``get_active_adapters`` reads them: its first LoRA
    layer's); [] for none."""
    layers = [] if module is None else [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    return list(layers[0].active_adapters) if layers else []


def activate(module: torch.nn.Module, adapters: list[str]) -> None:
    """Make ``adapters`` the active ones in every LoRA layer of ``module``, with each adapter's weight (diffusers'
    ``set_adapters`` scale) and every ``requires_grad`` flag as they were (peft's ``set_adapter`` would make the
    active adapters trainable; diffusers' ``set_adapters`` would reset the weights)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.set_adapter(adapters)
    for p, flag in flags:
        p.requires_grad_(flag)


class AdapterSwitch:
    """Turns the LoRA adapters of some modules on and off together, one adapter or none at a time.

    The peft layers' own active-adapter and disabled flags are set directly and put back after the block: peft's
    ``set_adapter`` would also change which adapter weights require gradients, which a polish (all subjects' adapters
    trainable at once) must keep.
    """

    def __init__(self, modules: Sequence[torch.nn.Module]):
        self.layers = [layer for m in modules for layer in m.modules() if isinstance(layer, BaseTunerLayer)]

    @contextmanager
    def only(self, adapter: str | None) -> Iterator[None]:
        """Inside the block only ``adapter`` is active (``None``: no adapter, the bare model)."""
        saved = [(layer._active_adapter, layer._disable_adapters) for layer in self.layers]
        for layer in self.layers:
            if adapter is None:
                layer._disable_adapters = True
            else:
                layer._active_adapter, layer._disable_adapters = [adapter], False
        try:
            yield
        finally:
            for layer, (active, disabled) in zip(self.layers, saved, strict=True):
                layer._active_adapter, layer._disable_adapters = active, disabled
