"""Nearest 2x upsampling then a 3x3 convolution, as one stride-2 transposed convolution (less than half the work).

The VAE decoder (and the UNet) upsample with diffusers' `Upsample2D`: repeat every pixel 2x2, then convolve 3x3 at
the new size. Every output pixel then reads only a 2x2 window of the input, so the pair is exactly one transposed
convolution with stride 2 and a 4x4 kernel made of sums of the 3x3 weights, run at the input's size: 16 taps per
2x2 output pixels instead of 36 (0.44x the multiply-adds), and the 4x larger upsampled tensor is never made. At
512 px the decoder's three upsamplers are about 15 % of an iteration's FLOPs (forward + backward).

The numbers are the same up to float rounding (the sums run in another order: relative differences ~1e-6 in
fp32), so the optimization uses it (`siso.accel.accelerated`) and the final images go through the stock modules, like
the channels-last layout. `fused_upsampling` swaps it in for a block and puts the stock forward back after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fused_upsampling", "upsample_conv_kernel"]

# Which of the 3x3 kernel's taps (columns) each of the 4x4 transposed kernel's taps (rows) sums, per dimension.
# Output row 2i reads input rows i-1 (tap 0) and i (taps 1 + 2); output row 2i+1 reads rows i (taps 0 + 1) and
# i+1 (tap 2); the transposed convolution's kernel, stride 2 and padding 1, places them as rows 3, 1, 2, 0.
_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def upsample_conv_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``conv_transpose2d`` weight (in, out, 4, 4) for stride 2, padding 1 that equals nearest 2x upsampling
    followed by ``conv2d(·, weight, padding=1)`` with a 3x3 ``weight`` (out, in, 3, 3)."""
    taps = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device)
    return torch.einsum("us,vt,oist->iouv", taps, taps, weight)


class _UpsampleConv(torch.autograd.Function):
    """Nearest 2x upsampling then ``conv2d(·, weight, bias, padding=1)``, as ``conv_transpose2d`` with the kernel of
    `upsample_conv_kernel`, for a frozen 3x3 ``weight``: keeps only the weight for backward (a parameter: no memory),
    where the input's gradient is the adjoint convolution with the kernel made again (no weight gradient needed)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.conv_transpose2d(x, upsample_conv_kernel(weight), bias, stride=2, padding=1)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return F.conv2d(grad, upsample_conv_kernel(weight), None, stride=2, padding=1), None, None


def _fusable(upsampler: nn.Module) -> nn.Conv2d | None:
    """The 3x3 convolution of an `Upsample2D` that is exactly nearest 2x then that convolution; else None."""
    if upsampler.norm is not None or upsampler.use_conv_transpose or not upsampler.use_conv:
        return None
    if not upsampler.interpolate:
        return None
    conv = upsampler.conv if upsampler.name == "conv" else upsampler.Conv2d_0
    plain = type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and conv.groups == 1
    shape = conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    return conv if plain and shape and conv.dilation == (1, 1) else None


def _fused_forward(upsampler: nn.Module, conv: nn.Conv2d):
    stock = upsampler.forward

    def forward(hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        doubled = output_size is None or tuple(output_size) == (2 * height, 2 * width)
        if args or kwargs or not doubled or conv.weight.requires_grad or hidden_states.shape[1] != upsampler.channels:
            return stock(hidden_states, output_size, *args, **kwargs)
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            return _UpsampleConv.apply(hidden_states, conv.weight, conv.bias)
        return F.conv_transpose2d(hidden_states, upsample_conv_kernel(conv.weight), conv.bias, stride=2, padding=1)

    return forward


@contextmanager
def fused_upsampling(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block, every diffusers `Upsample2D` of ``modules`` with a frozen 3x3 convolution after nearest 2x
    upsampling runs as one transposed convolution (`upsample_conv_kernel`) that keeps nothing for backward but its
    weight. Other upsamplers (and calls with another output size) run as before; the stock forward is back after
    the block."""
    from diffusers.models.upsampling import Upsample2D

    patched: list[nn.Module] = []
    try:
        for module in filter(None, modules):
            for upsampler in module.modules():
                if isinstance(upsampler, Upsample2D) and (conv := _fusable(upsampler)) is not None:
                    upsampler.forward = _fused_forward(upsampler, conv)
                    patched.append(upsampler)
        yield
    finally:
        for upsampler in patched:
            del upsampler.forward
