"""`siso.lean.lean_graph`: the same images and gradients from a smaller autograd graph, and the stock modules after."""

import pytest
import torch
from torch import nn

from siso.backbones import load_backbone
from siso.config import LoraSettings
from siso.lean import lean_graph
from siso.lora import add_lora, trainable
from siso.losses import SimilarityLoss
from siso.optimize import optimize_lora


def _saved_bytes(fn):
    """Run ``fn`` and count the bytes autograd keeps for backward (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def _iteration(backbone, params):
    """One SISO iteration's gradient path (the last denoising step and the VAE decode) -> image, bytes, grads."""
    cond = backbone.encode_prompt("a photo of a dog", 0.0)
    image, saved = _saved_bytes(lambda: backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1))
    image.square().mean().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return image.detach(), saved, grads


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_lean_graph_keeps_less_and_changes_nothing(model_dirs, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    modules = add_lora(backbone, LoraSettings())
    params = list(trainable(modules[backbone.denoiser_name]).values())
    vae = backbone.pipe.vae
    stock = {name: type(m) for name, m in vae.named_modules()}

    image, saved, grads = _iteration(backbone, params)
    with lean_graph(vae, backbone.denoiser):
        lean_image, lean_saved, lean_grads = _iteration(backbone, params)
        if family == "sd":  # AutoencoderKL's resnets: GroupNorm -> SiLU fused, the activation an identity
            resnet = vae.decoder.up_blocks[0].resnets[0]
            assert type(resnet.norm1).__name__ == "GroupNormSiLU" and isinstance(resnet.nonlinearity, nn.Identity)
    assert torch.equal(lean_image, image)  # bit-identical forward
    for g, lean_g in zip(grads, lean_grads, strict=True):
        torch.testing.assert_close(lean_g, g, rtol=1e-5, atol=1e-7)
    # Tiny models: the graph is dominated by full-resolution VAE activations, as at real size.
    assert lean_saved < 0.75 * saved, (lean_saved, saved)
    # The stock modules are back: no instance-level forward, the same module types.
    assert {name: type(m) for name, m in vae.named_modules()} == stock
    convs = [m for m in (*vae.modules(), *backbone.denoiser.modules()) if isinstance(m, nn.Conv2d)]
    assert convs and not any("forward" in vars(m) for m in convs)


def test_lean_graph_leaves_trainable_and_grad_free_convolutions_alone():
    conv = nn.Conv2d(3, 4, 3, padding=1)  # trainable weight: the input is needed for its gradient
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with lean_graph(conv):
        _, saved = _saved_bytes(lambda: conv(x))
        assert saved >= x.numel() * 4
        conv(x).sum().backward()
        with torch.no_grad():
            assert conv(x).grad_fn is None
    assert conv.weight.grad is not None
    conv.requires_grad_(False)
    with lean_graph(conv):
        y, saved = _saved_bytes(lambda: conv(x))
        assert saved == conv.weight.numel() * 4  # only the weight, a parameter: no activation kept
        (grad_x,) = torch.autograd.grad(y.sum(), x)
    (expected,) = torch.autograd.grad(conv(x).sum(), x)
    torch.testing.assert_close(grad_x, expected)


def test_optimizing_lean_gives_the_same_run(model_dirs, subject, make_config):
    histories = []
    for lean in (False, True):
        backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
        config = make_config("sd", max_iters=3, patience=3, min_improvement=0.0)
        loss_fn = SimilarityLoss(config.similarity, subject, "cpu", torch.float32)

        def render(cond, backbone=backbone, opt=config.optim):
            generator = torch.Generator().manual_seed(opt.seed)
            return backbone.sample(cond, generator, opt.num_inference_steps, opt.grad_steps, opt.guidance_scale)

        result = optimize_lora(backbone, render, loss_fn, config, progress=False, lean=lean)
        histories.append([h["loss"] for h in result.history])
    assert histories[0] == histories[1]  # bit-identical forward, equal gradients: the same run
