"""A leaner autograd graph through frozen convolutional networks (the VAE decoder, the UNet's convolutions).

SISO backpropagates through the VAE decode at full image resolution, and at 512 px that graph is most of the
iteration's memory. Three things in it (and in the UNet's) are kept for nothing or for little, and one is made
for nothing:

- A convolution keeps its input for the backward pass even when its weight is frozen, though the gradient w.r.t.
  the input needs only the weight (``torch.nn.grad.conv2d_input``). A frozen convolution here keeps nothing.
- GroupNorm then SiLU keep two full-size tensors (the norm's input, and its output for SiLU). Fused, they keep only
  the input, and the backward recomputes the norm (elementwise work, no convolution). In the UNet's resnet blocks
  the activation also meets the time embedding, which keeps its SiLU (`TimeEmbeddingSiLU`).
- GEGLU (the UNet's feed-forward: ``value * gelu(gate)``) keeps both halves and ``gelu(gate)``; here only the
  halves, and the backward recomputes the GELU.
- The VAE's resnet blocks end with ``(input + hidden) / 1.0``: two new full-size tensors in the forward pass and one
  in the backward. Here the residual is added in place (each new tensor is fresh memory: on a CPU, page faults).

All give bit-identical outputs and the same gradients, with no convolution recomputed: unlike gradient
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
    """``silu(group_norm(x))`` with frozen affine parameters that keeps only ``x`` and recomputes the rest.

    The backward calls the kernels autograd would (``native_group_norm``, ``silu_backward``,
    ``native_group_norm_backward``: the same numbers) with no autograd graph of its own, the SiLU's gradient written
    over the recomputed norm, so at most two full-size temporaries are alive at once and two are made: at 512 px the
    VAE's largest is 268 MB.
    """

    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):
        ctx.save_for_backward(x, weight, bias)
        ctx.norm = (num_groups, eps)
        return F.silu(F.group_norm(x, num_groups, weight, bias, eps), inplace=True)  # the norm's output is ours

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        num_groups, eps = ctx.norm
        memory_format = _suggest_memory_format(x)
        x = x.contiguous(memory_format=memory_format)  # what aten's group_norm gave native_group_norm
        batch, channels = x.shape[:2]
        pixels = x.numel() // (batch * channels)
        aten = torch.ops.aten
        normed, mean, rstd = aten.native_group_norm(x, weight, bias, batch, channels, pixels, num_groups, eps)
        grad_normed = aten.silu_backward.grad_input(grad, normed, grad_input=normed)  # in place: one tensor fewer
        grad_x, _, _ = aten.native_group_norm_backward(
            grad_normed.contiguous(memory_format=memory_format),  # as autograd passes it on a CPU
            x,
            mean,
            rstd,
            weight,
            batch,
            channels,
            pixels,
            num_groups,
            [True, False, False],
        )
        return grad_x, None, None, None, None


def _suggest_memory_format(x: torch.Tensor) -> torch.memory_format:
    """``Tensor::suggest_memory_format`` of ATen (not exposed to Python): channels-last only for 4-D tensors whose
    strides order the dimensions C, W, H, N, with no ambiguity left by size-1 dimensions (then contiguous)."""
    if x.dim() != 4:
        return torch.contiguous_format
    smallest = 0
    for dim in (1, 3, 2, 0):
        size, stride = x.shape[dim], x.stride(dim)
        if size == 0 or stride < smallest or (dim == 0 and smallest == x.stride(1)):
            return torch.contiguous_format
        smallest = stride * size if size > 1 else stride
    return torch.channels_last


class _GatedGELU(torch.autograd.Function):
    """GEGLU's gate, ``value * gelu(gate)`` of the two halves of ``projected``, keeping only ``projected`` (the stock
    ops also keep ``gelu(gate)``) and recomputing the GELU in backward."""

    @staticmethod
    def forward(ctx, projected):
        ctx.save_for_backward(projected)
        value, gate = projected.chunk(2, dim=-1)
        return value * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad):
        (projected,) = ctx.saved_tensors
        with torch.enable_grad():
            projected = projected.detach().requires_grad_()
            value, gate = projected.chunk(2, dim=-1)
            out = value * F.gelu(gate)
        (grad_projected,) = torch.autograd.grad(out, projected, grad)
        return grad_projected


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


class TimeEmbeddingSiLU(nn.Module):
    """Stands in for the SiLU of a diffusers resnet block whose GroupNorm -> SiLU pairs are fused: the block also
    applies its activation to the time embedding (a (batch, channels) tensor), which still gets SiLU; its feature
    maps (4-D) already went through the fused pair and pass unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x) if x.ndim == 2 else x


def _lean_geglu_forward(geglu: nn.Module):
    stock = geglu.forward

    def forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not torch.is_grad_enabled():
            return stock(hidden_states, *args, **kwargs)
        projected = geglu.proj(hidden_states)
        if not projected.requires_grad:
            value, gate = projected.chunk(2, dim=-1)
            return value * geglu.gelu(gate)
        return _GatedGELU.apply(projected)

    return forward


def _lean_residual_forward(block: nn.Module):
    """The forward of a diffusers ``ResnetBlock2D`` without a time embedding, resampling or output scale (the VAE's),
    with the residual added in place to ``conv2``'s output: the stock ``(input + hidden) / 1.0`` makes two new
    full-size tensors (268 MB each at 512 px) and its backward a third, for the same numbers."""
    stock = block.forward

    def forward(input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if temb is not None or args or kwargs:
            return stock(input_tensor, temb, *args, **kwargs)
        hidden = block.conv1(block.nonlinearity(block.norm1(input_tensor)))
        hidden = block.conv2(block.dropout(block.nonlinearity(block.norm2(hidden))))
        shortcut = input_tensor if block.conv_shortcut is None else block.conv_shortcut(input_tensor)
        if hidden.shape != shortcut.shape or hidden.stride() != shortcut.stride() or hidden._base is not None:
            return shortcut + hidden  # (not expected: a layout in-place addition would not reproduce)
        return hidden.add_(shortcut)  # a + b == b + a exactly

    return forward


def _residual_sites(module: nn.Module) -> Iterator[nn.Module]:
    """diffusers' ``ResnetBlock2D``s whose forward `_lean_residual_forward` reproduces: no time embedding, no
    up/downsampling, an output scale of 1 (the VAE's)."""
    from diffusers.models.resnet import ResnetBlock2D

    for block in module.modules():
        if (
            type(block) is ResnetBlock2D
            and block.time_emb_proj is None
            and block.upsample is None
            and block.downsample is None
            and block.output_scale_factor == 1
        ):
            yield block


def _norm_act_sites(module: nn.Module) -> Iterator[tuple[nn.Module, tuple[str, ...], str, nn.Module]]:
    """(owner, norm attributes, activation attribute, what replaces the activation) where the activation follows
    only those GroupNorms: diffusers' resnet blocks, after norm1 and norm2 (with a time embedding only when it is
    added before norm2, the ``default`` norm: the UNet's; then the activation also meets the time embedding), and
    the VAE decoder's output norm."""
    from diffusers.models.autoencoders.vae import Decoder
    from diffusers.models.resnet import ResnetBlock2D

    for owner in module.modules():
        if isinstance(owner, ResnetBlock2D):
            if owner.time_emb_proj is None:  # the VAE's (then time_embedding_norm only names the norm: GroupNorm)
                yield owner, ("norm1", "norm2"), "nonlinearity", nn.Identity()
            elif owner.time_embedding_norm == "default":
                yield owner, ("norm1", "norm2"), "nonlinearity", TimeEmbeddingSiLU()
        elif isinstance(owner, Decoder):
            yield owner, ("conv_norm_out",), "conv_act", nn.Identity()


@contextmanager
def lean_graph(*modules: nn.Module | None) -> Iterator[None]:
    """Inside the block, frozen convolutions of ``modules`` keep no input for backward, the frozen GroupNorm -> SiLU
    pairs of diffusers' resnet blocks (the VAE's and the UNet's) keep one tensor instead of two, and GEGLU gates
    (the UNet's feed-forward) two halves instead of three. Outputs are bit-identical and gradients equal; the stock
    modules are back after the block."""
    from diffusers.models.activations import GEGLU
    from diffusers.utils import is_torch_npu_available

    patched: list[nn.Module] = []  # modules with an instance-level forward
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for module in filter(None, modules):
            for owner, norm_names, act_name, activation in list(_norm_act_sites(module)):
                norms = [getattr(owner, name) for name in norm_names]
                if type(getattr(owner, act_name)) is nn.SiLU and all(
                    type(norm) is nn.GroupNorm and _frozen(norm) for norm in norms
                ):
                    replacements = [
                        *((n, GroupNormSiLU(m)) for n, m in zip(norm_names, norms, strict=True)),
                        (act_name, activation),
                    ]
                    for name, new in replacements:
                        swapped.append((owner, name, getattr(owner, name)))
                        setattr(owner, name, new)
            for block in _residual_sites(module):
                block.forward = _lean_residual_forward(block)
                patched.append(block)
            for layer in module.modules():
                if type(layer) is nn.Conv2d and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
                    layer.forward = _frozen_conv_forward(layer)
                    patched.append(layer)
                elif type(layer) is GEGLU and not is_torch_npu_available():  # (the NPU has its own fused kernel)
                    layer.forward = _lean_geglu_forward(layer)
                    patched.append(layer)
        yield
    finally:
        for owner, name, stock in reversed(swapped):
            setattr(owner, name, stock)
        for module in patched:
            del module.forward
