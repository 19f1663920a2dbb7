"""The one composer of the acceleration stack: what an optimization changes in the modules, and undoes after it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from siso.accel.compile import compiled
from siso.accel.lean import lean_graph
from siso.accel.upsample import fused_upsampling
from siso.backbones import Backbone
from siso.config import AccelSettings


@contextmanager
def accelerated(
    backbone: Backbone,
    settings: AccelSettings,
    loss_nets: Iterable[torch.nn.Module] = (),
    loss_vae: torch.nn.Module | None = None,
) -> Iterator[None]:
    """Inside the block, ``backbone`` (and ``loss_nets`` when compiling) run as ``settings`` say; the stock modules
    are back after it. Generation, editing (its loop and its reconstruction), ``eval run`` and ``siso bench`` all
    run their iterations inside this block, so a lever is added here once.

    Args:
        backbone: The backbone being optimized.
        settings: The levers (`siso.config.AccelSettings`, or a preset: ``AccelSettings.preset("reference")``).
        loss_nets: The similarity networks the objective runs (compiled with ``settings.compile``).
        loss_vae: Decode with this VAE instead of the backbone's (the fast loss's tiny decoder); applied first, so
            the layout and the lean graph apply to the decoder in use.
    """
    with ExitStack() as stack:
        if loss_vae is not None:
            stack.enter_context(backbone.decoding_with(loss_vae))
        vae, denoiser = backbone.pipe.vae, backbone.denoiser
        if settings.channels_last_vae:
            stack.enter_context(backbone.channels_last_vae())
        if settings.fuse_upsampling:
            stack.enter_context(fused_upsampling(vae, denoiser))
        if settings.compile:  # the compiler then decides what the backward keeps (no lean graph)
            stack.enter_context(compiled(denoiser, vae.decoder, *loss_nets))
        elif settings.lean_graph:
            stack.enter_context(lean_graph(vae, denoiser))
        yield
