"""Helpers for tests of what autograd keeps and of levers that must not change a run: the bytes saved for backward,
one iteration's gradient path, and a short run's losses."""

import torch


def saved_bytes(fn):
    """Run ``fn`` and count the bytes autograd keeps for backward (each storage once) -> (its output, bytes)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def gradient_path(backbone, params):
    """One SISO iteration's gradient path (the last denoising step and the VAE decode) -> image, bytes, grads."""
    cond = backbone.encode_prompt("a photo of a dog", 0.0)
    image, saved = saved_bytes(lambda: backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1))
    image.square().mean().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return image.detach(), saved, grads


def run_losses(model_dir, subject, config, **accel) -> list[float]:
    """The losses of a run of `siso.optimize.optimize_lora` on a fresh backbone from ``model_dir`` with ``config``,
    its acceleration settings changed as ``accel`` says (``lean_graph=False``, ``fuse_upsampling=False``, ...)."""
    import dataclasses

    from siso.backbones import load_backbone
    from siso.losses import SimilarityLoss
    from siso.optimize import optimize_lora

    backbone = load_backbone(str(model_dir), device="cpu")
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cpu", torch.float32)
    opt = config.optim

    def render(cond):
        generator = torch.Generator().manual_seed(opt.seed)
        return backbone.sample(cond, generator, opt.num_inference_steps, opt.grad_steps, opt.guidance_scale)

    config = dataclasses.replace(config, accel=dataclasses.replace(config.accel, **accel))
    result = optimize_lora(backbone, render, loss_fn, config, progress=False)
    return [h["loss"] for h in result.history]
