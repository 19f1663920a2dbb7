"""A leaner autograd graph through frozen convolutional networks (the VAE decoder, the UNet's convolutions).

SISO backpropagates through the VAE decode at full image resolution, and at 512 px that graph is most of the
iteration's memory. Two things in it are kept for nothing or for little:

- A convolution keeps its input for the backward pass even when its weight is frozen, though the gradient w.r.t.
  the input needs only the weight (``torch.nn.grad.conv2d_input``). A frozen convolution here keeps nothing.
- GroupNorm then SiLU keep two full-size tensors (the norm's input, and its output for SiLU). Fused, they keep only
  the input, and the backward recomputes the norm (elementwise work, no convolution).

Both give bit-identical outputs and the same gradients, with no convolution recomputed: unlike gradient
checkpointing they cost almost no time. `lean_graph` applies them to a module tree for the duration of a block and
puts the stock modules back after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["lean_graph"]


class _FrozenConv2d(torch.autograd.Function):
    """`F.conv2d` with a frozen weight and bias that keeps nothing but the weight for backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)  # a parameter: saving it costs no memory
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        grad_x = torch.nn.grad.conv2d_input(shape, weight, grad, stride, padding, dilation, groups)
        return grad_x, None, None, None, None, None, None


class _GroupNormSiLU(torch.autograd.Function):
    """``silu(group_norm(x))`` with frozen affine parameters that keeps only ``x`` and recomputes the rest."""

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        ctx.save_for_backward(x, weight, bias)
        ctx.norm = (num_groups, eps)
        return F.silu(F.group_norm(x, num_groups, weight, bias, eps))

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        num_groups, eps = ctx.norm
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            y = F.silu(F.group_norm(x, num_groups, weight, bias, eps))
        (grad_x,) = torch.autograd.grad(y, x, grad)
        return grad_x, None, None, None, None


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters(recurse=False))


class GroupNormSiLU(nn.Module):
    """A frozen `nn.GroupNorm` followed by SiLU, through `_GroupNormSiLU` (stands in for the pair inside the block)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.silu(norm(x))
        return _GroupNormSiLU.apply(x, norm.num_groups, norm.weight, norm.bias, norm.eps)


def _frozen_conv_forward(conv: nn.Conv2d):
    stock = conv.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad) or not _frozen(conv):
            return stock(x)
        return _FrozenConv2d.apply(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    return forward


def _norm_act_sites(module: nn.Module) -> Iterator[tuple[nn.Module, tuple[str, ...], str]]:
    """(owner, norm attributes, activation attribute) where the activation follows only those GroupNorms: resnet
    blocks without a time embedding (the VAE's: after norm1 and norm2, nowhere else) and the VAE decoder's
    output norm."""
    from diffusers.models.autoencoders.vae import Decoder
    from diffusers.models.resnet import ResnetBlock2D

    for owner in module.modules():
        if isinstance(owner, ResnetBlock2D):
            if owner.time_emb_proj is None:  # (then time_embedding_norm only names the norm: GroupNorm here)
                yield owner, ("norm1", "norm2"), "nonlinearity"
        elif isinstance(owner, Decoder):
            yield owner, ("conv_norm_out",), "conv_act"


@contextmanager
def lean_graph(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block, frozen convolutions of ``modules`` keep no input for backward, and the frozen
    GroupNorm -> SiLU pairs of diffusers' resnet blocks (time-embedding-free: the VAE's) keep one tensor instead of
    two. Outputs are bit-identical and gradients equal; the stock modules are back after the block."""
    convs: list[nn.Conv2d] = []
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for module in filter(None, modules):
            for owner, norm_names, act_name in list(_norm_act_sites(module)):
                norms = [getattr(owner, name) for name in norm_names]
                if type(getattr(owner, act_name)) is nn.SiLU and all(
                    type(norm) is nn.GroupNorm and _frozen(norm) for norm in norms
                ):
                    replacements = [
                        *((n, GroupNormSiLU(m)) for n, m in zip(norm_names, norms, strict=True)),
                        (act_name, nn.Identity()),
                    ]
                    for name, new in replacements:
                        swapped.append((owner, name, getattr(owner, name)))
                        setattr(owner, name, new)
            for conv in module.modules():
                if type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
                    conv.forward = _frozen_conv_forward(conv)
                    convs.append(conv)
        yield
    finally:
        for owner, name, stock in reversed(swapped):
            setattr(owner, name, stock)
        for conv in convs:
            del conv.forward
