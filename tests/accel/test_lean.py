"""`siso.accel.lean.lean_graph`: the same images and gradients from a smaller autograd graph, stock modules after."""

import pytest
import torch
from diffusers.models.activations import GEGLU
from diffusers.models.resnet import ResnetBlock2D
from graphs import gradient_path, run_losses, saved_bytes
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from siso.accel.lean import GroupNormSiLU, lean_graph
from siso.backbones import load_backbone
from siso.config import LoraSettings
from siso.lora import add_lora, trainable


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_lean_graph_keeps_less_and_changes_nothing(model_dirs, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    modules = add_lora(backbone, LoraSettings())
    params = list(trainable(modules[backbone.denoiser_name]).values())
    vae = backbone.pipe.vae
    stock = {name: type(m) for name, m in (*vae.named_modules(), *backbone.denoiser.named_modules())}
    gegl = [m for m in backbone.denoiser.modules() if isinstance(m, GEGLU)]
    assert bool(gegl) == (family == "sd")  # the UNet's feed-forward; Sana's is GLUMBConv

    image, saved, grads = gradient_path(backbone, params)
    with lean_graph(vae, backbone.denoiser):
        lean_image, lean_saved, lean_grads = gradient_path(backbone, params)
        if family == "sd":  # AutoencoderKL's resnets: GroupNorm -> SiLU fused, the activation an identity
            resnet = vae.decoder.up_blocks[0].resnets[0]
            assert type(resnet.norm1).__name__ == "GroupNormSiLU" and isinstance(resnet.nonlinearity, nn.Identity)
            assert "forward" in vars(resnet)  # the residual added in place
            # The UNet's: fused too, the activation kept for the time embedding; its GEGLU gates lean.
            resnet = backbone.denoiser.down_blocks[0].resnets[0]
            assert type(resnet.norm2).__name__ == "GroupNormSiLU"
            assert type(resnet.nonlinearity).__name__ == "TimeEmbeddingSiLU"
            assert all("forward" in vars(m) for m in gegl)
            assert "forward" not in vars(resnet)  # a time embedding: the stock forward
    assert torch.equal(lean_image, image)  # bit-identical forward
    for g, lean_g in zip(grads, lean_grads, strict=True):
        torch.testing.assert_close(lean_g, g, rtol=1e-5, atol=1e-7)
    # Tiny models: the graph is dominated by full-resolution VAE activations, as at real size.
    assert lean_saved < 0.75 * saved, (lean_saved, saved)
    # The stock modules are back: no instance-level forward, the same module types.
    assert {name: type(m) for name, m in (*vae.named_modules(), *backbone.denoiser.named_modules())} == stock
    convs = [m for m in (*vae.modules(), *backbone.denoiser.modules()) if isinstance(m, nn.Conv2d)]
    resnets = [m for m in vae.modules() if isinstance(m, ResnetBlock2D)]
    assert bool(resnets) == (family == "sd")  # (Sana's DC-AE has its own blocks)
    assert convs and not any("forward" in vars(m) for m in (*convs, *gegl, *resnets))


@pytest.mark.parametrize("channels", [(8, 8), (8, 16)])  # with and without a shortcut convolution
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_vae_resnet_adds_its_residual_in_place(channels, layout):
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=channels[0], out_channels=channels[1], temb_channels=None, groups=4).eval()
    block.requires_grad_(False).to(memory_format=layout)
    x = torch.randn(2, channels[0], 16, 16).to(memory_format=layout)

    def run():
        ops = OpNames()
        z = x.clone().requires_grad_()
        with ops:
            out = block(z, None)
            (grad,) = torch.autograd.grad(out.square().sum(), z)
        return out, grad, ops.names

    out, grad, stock_ops = run()
    with lean_graph(block):
        lean_out, lean_grad, lean_ops = run()
    assert torch.equal(lean_out, out) and lean_out.stride() == out.stride()
    torch.testing.assert_close(lean_grad, grad, rtol=1e-5, atol=1e-7)
    # The stock block divides by its output scale (1) forward and backward and adds out of place.
    assert stock_ops.count("aten.div.Tensor") == 2 and "aten.add_.Tensor" not in stock_ops
    assert "aten.div.Tensor" not in lean_ops and "aten.add_.Tensor" in lean_ops


class OpNames(TorchDispatchMode):
    """The aten ops run inside the block, by name."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_lean_graph_leaves_trainable_and_grad_free_convolutions_alone():
    conv = nn.Conv2d(3, 4, 3, padding=1)  # trainable weight: the input is needed for its gradient
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with lean_graph(conv):
        _, saved = saved_bytes(lambda: conv(x))
        assert saved >= x.numel() * 4
        conv(x).sum().backward()
        with torch.no_grad():
            assert conv(x).grad_fn is None
    assert conv.weight.grad is not None
    conv.requires_grad_(False)
    with lean_graph(conv):
        y, saved = saved_bytes(lambda: conv(x))
        assert saved == conv.weight.numel() * 4  # only the weight, a parameter: no activation kept
        (grad_x,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(conv(x).sum(), x)
    torch.testing.assert_close(grad_x, expected)


def test_optimizing_lean_gives_the_same_run(model_dirs, subject, make_config):
    config = make_config("sd", max_iters=3, patience=3, min_improvement=0.0)
    histories = [run_losses(model_dirs["sd"], subject, config, lean_graph=lean) for lean in (False, True)]
    assert histories[0] == histories[1]  # bit-identical forward, equal gradients: the same run


def test_lean_graph_in_the_unet_keeps_less_and_changes_nothing(model_dirs):
    """The UNet's resnets (time embedding added before norm2) and GEGLU gates, alone: the same output and input
    gradient, less kept."""
    unet = load_backbone(str(model_dirs["sd"]), device="cpu").denoiser
    torch.manual_seed(0)
    config = unet.config
    latents = torch.randn(1, config.in_channels, 16, 16, requires_grad=True)
    text = torch.randn(1, 7, config.cross_attention_dim)

    def run():
        out, saved = saved_bytes(lambda: unet(latents, 999, encoder_hidden_states=text).sample)
        (grad,) = torch.autograd.grad(out.square().mean(), latents)
        return out.detach(), saved, grad

    out, saved, grad = run()
    with lean_graph(unet):
        lean_out, lean_saved, lean_grad = run()
    assert torch.equal(lean_out, out)
    torch.testing.assert_close(lean_grad, grad, rtol=1e-5, atol=1e-7)
    # Tiny: attention (untouched) is a larger share than at real size; 0.78x here.
    assert lean_saved < 0.85 * saved, (lean_saved, saved)


@pytest.mark.parametrize("shape", [(2, 6, 5, 5), (1, 8, 1, 1), (1, 32, 4, 4)])
@pytest.mark.parametrize("x_format", [torch.contiguous_format, torch.channels_last, "permuted"])
@pytest.mark.parametrize("grad_format", [torch.contiguous_format, torch.channels_last])
def test_fused_group_norm_silu_backward_is_autograds_exactly(shape, x_format, grad_format):
    """The fused pair's backward calls aten's kernels itself: bit-identical to autograd's for every layout,
    including channels-last-like strides aten does not call channels-last (a transformer's permuted output)."""
    torch.manual_seed(0)
    if x_format == "permuted":  # (N, H, W, C) storage seen as NCHW, batch stride C: aten calls it contiguous
        n, c, h, w = shape
        batch_stride = c if n == 1 else h * w * c
        x = torch.as_strided(torch.randn(n * c * h * w), shape, (batch_stride, 1, w * c, c))
    else:
        x = torch.randn(shape).contiguous(memory_format=x_format)
    weight, bias = torch.randn(shape[1]), torch.randn(shape[1])
    grad = torch.randn(shape).contiguous(memory_format=grad_format)
    norm = nn.GroupNorm(2, shape[1]).requires_grad_(False)
    norm.weight.copy_(weight), norm.bias.copy_(bias)
    x.requires_grad_()
    (expected,) = torch.autograd.grad(nn.SiLU()(norm(x)), x, grad)
    (fused,) = torch.autograd.grad(GroupNormSiLU(norm)(x), x, grad)
    assert torch.equal(fused, expected)
