"""Helpers for tests of what autograd keeps: the bytes saved for backward, and one iteration's gradient path."""

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
