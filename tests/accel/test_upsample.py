"""`siso.accel.upsample`: nearest 2x upsampling + 3x3 convolution as one transposed convolution: the same numbers up to
float rounding, less kept for backward, and the stock modules after."""

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from graphs import gradient_path, run_losses, saved_bytes

from siso.accel.upsample import fused_upsampling, upsample_conv_kernel
from siso.backbones import load_backbone
from siso.config import LoraSettings
from siso.lora import add_lora, trainable


@pytest.mark.parametrize("size", [(5, 7), (8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_equals_upsample_then_conv(size, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 6, *size)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(4, 6, 3, 3), torch.randn(4)
    x.requires_grad_()
    stock = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)
    fused = F.conv_transpose2d(x, upsample_conv_kernel(weight), bias, stride=2, padding=1)
    assert fused.shape == stock.shape == (2, 4, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(fused, stock, rtol=1e-5, atol=1e-5)  # float rounding only: sums in another order
    grad = torch.randn_like(stock)
    (stock_grad,) = torch.autograd.grad(stock, x, grad)
    (fused_grad,) = torch.autograd.grad(fused, x, grad)
    torch.testing.assert_close(fused_grad, stock_grad, rtol=1e-5, atol=1e-5)


def test_frozen_upsampler_keeps_only_the_kernel_and_falls_back_otherwise():
    up = Upsample2D(8, use_conv=True).requires_grad_(False)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    stock_out = up(x)
    (stock_grad,) = torch.autograd.grad(stock_out.sum(), x)
    with fused_upsampling(up):
        out, saved = saved_bytes(lambda: up(x))
        assert saved == up.conv.weight.numel() * 4  # only the weight, a parameter: no activation kept
        (grad,) = torch.autograd.grad(out.sum(), x)
        # Another output size (the UNet's odd latents): the stock path, exactly.
        assert torch.equal(up(x, output_size=(11, 13)), Upsample2D.forward(up, x, output_size=(11, 13)))
        # A trainable convolution (its weight gradient is needed): the stock path, exactly.
        up.conv.weight.requires_grad_(True)
        assert torch.equal(up(x), stock_out)
    torch.testing.assert_close(out, stock_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, stock_grad, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(up)  # the stock forward is back


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_fused_upsampling_in_a_backbone(model_dirs, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    modules = add_lora(backbone, LoraSettings())
    params = list(trainable(modules[backbone.denoiser_name]).values())
    upsamplers = [m for m in backbone.pipe.vae.modules() if isinstance(m, Upsample2D)]
    assert upsamplers

    image, saved, grads = gradient_path(backbone, params)
    calls = []
    hooks = [m.register_forward_hook(lambda m, a, out: calls.append(out.grad_fn)) for m in upsamplers]
    with fused_upsampling(backbone.pipe.vae, backbone.denoiser):
        fused_image, fused_saved, fused_grads = gradient_path(backbone, params)
    for hook in hooks:
        hook.remove()
    assert calls and all(type(fn).__name__ == "_UpsampleConvBackward" for fn in calls)
    torch.testing.assert_close(fused_image, image, rtol=1e-5, atol=1e-5)
    for g, fused_g in zip(grads, fused_grads, strict=True):
        torch.testing.assert_close(fused_g, g, rtol=1e-4, atol=1e-6)
    assert fused_saved < saved  # the upsampled tensors are never made, nor kept
    assert not any("forward" in vars(m) for m in upsamplers)


def test_optimizing_with_fused_upsampling_gives_the_same_run_up_to_rounding(model_dirs, subject, make_config):
    config = make_config("sd", max_iters=3, patience=3, min_improvement=0.0)
    histories = [run_losses(model_dirs["sd"], subject, config, fuse_upsampling=fuse) for fuse in (False, True)]
    torch.testing.assert_close(torch.tensor(histories[1]), torch.tensor(histories[0]), rtol=1e-5, atol=1e-6)
