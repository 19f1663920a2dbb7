"""Opt-in ``torch.compile`` of what an iteration runs (`siso.config.AccelSettings.compile`, ``--compile``).

The denoiser, the VAE decoder and the similarity networks are compiled in place for the optimization and are plain
modules again after it (`generate` runs eager). The first iteration pays the compile time; the last one, which
builds no graph, runs eager rather than compile a second, gradient-free graph. Compiled modules do not take the lean
graph (`siso.accel.lean`): the compiler decides itself what the backward keeps and what it recomputes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["compiled", "eager"]


@contextmanager
def compiled(*modules: torch.nn.Module | None) -> Iterator[None]:
    """``modules`` (``None`` skipped) run compiled inside the block (`torch.nn.Module.compile`), eager after it."""
    done = []
    try:
        for module in filter(None, modules):
            module.compile()
            done.append(module)
        yield
    finally:
        for module in done:
            module._compiled_call_impl = None  # what `nn.Module.compile` set: the module's own forward again


def eager():
    """Compiled modules run eager inside the block (an iteration that would otherwise compile another graph)."""
    return torch.compiler.set_stance("force_eager")
