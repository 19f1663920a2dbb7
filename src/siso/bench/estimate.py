"""The GPU memory of optimizing at real size, estimated without running anything at real size (``siso bench
--memory``).

Each backbone and the similarity networks are built at their published architectures on PyTorch's meta device
(shapes, no memory, no arithmetic; `siso.bench.architectures`). The estimate is the sum of:

- the weights left on the GPU while optimizing, counted exactly: the denoiser (as ``--quantize`` stores it), the VAE
  and the two similarity networks; the text encoders are off the GPU then (``offload_text_encoders``, the default);
- the LoRA with its AdamW state: fp32 weights, gradients and two moments, 16 bytes per LoRA parameter;
- the activations one iteration keeps for backward: the storages the autograd graph saves (weights left out), summed
  by a saved-tensor hook while the loop's own steps run on the meta device (`Backbone.sample`, then
  `siso.losses.SimilarityLoss`) inside `siso.accel.accelerated` with the ``default`` preset (the lean graph, fused
  upsampling), attention counted as a fused GPU kernel keeps it (`FusedAttention`).

Left out: the backward pass's transient buffers, the CUDA context and the allocator's slack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from siso.accel import accelerated
from siso.backbones import Backbone, config_for
from siso.bench.architectures import build_backbone, build_similarity
from siso.bench.measure import subject_photos
from siso.config import AccelSettings, MemorySettings, SisoConfig
from siso.lora import add_lora
from siso.losses import ClipImageEmbedding, DinoEmbedding, LossNetworks, SimilarityLoss

GB = 1e9
ADAM_BYTES = 16  # per LoRA parameter: fp32 weight, gradient and AdamW's two moments
OPTIONS = ("default", "checkpointing", "int8", "nf4")  # each adds to the one before: the report's columns
PARTS = ("denoiser", "vae decode", "similarity")


class FusedAttention(TorchFunctionMode):
    """Inside the block, ``F.scaled_dot_product_attention`` runs PyTorch's fused flash-attention kernel for CPUs,
    which keeps for backward what the fused GPU kernels (flash, memory-efficient) keep: query, key, value, the output
    and a row log-sum-exp, not the N x N attention matrix of the math path that the meta device otherwise takes. A
    function mode: no module attribute is replaced, and nothing outside the block sees it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        return _flash_attention(*args, **kwargs)


def _flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa:  # (no backbone here groups its query heads)
        raise ValueError("grouped-query attention is not counted")
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # has a meta implementation
    return kernel(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


@contextmanager
def _schedule_on_cpu(backbone: Backbone) -> Iterator[None]:
    """Inside the block, on the meta device, the scheduler works its schedule out on the CPU (Euler's
    ``set_timesteps`` copies its sigmas to the CPU, which a meta tensor cannot) and hands the timesteps over on the
    meta device."""
    if backbone.device.type != "meta":
        yield
        return
    scheduler = backbone.pipe.scheduler
    stock = scheduler.set_timesteps

    @functools.wraps(stock)  # the pipelines' ``retrieve_timesteps`` reads its signature
    def set_timesteps(*args, device=None, **kwargs):
        stock(*args, device="cpu", **kwargs)
        scheduler.timesteps = scheduler.timesteps.to(device)

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        del scheduler.set_timesteps


def weight_bytes(module: torch.nn.Module, quantize: str | None = None) -> int:
    """Bytes of ``module``'s frozen parameters and buffers, with its linear layers' weights as ``quantize`` stores
    them (`siso.backbones.quantize`): ``int8`` (torchao weight-only) 1 byte per weight and per output row an fp32
    scale and an int8 zero point; ``nf4`` (bitsandbytes) half a byte per weight and an fp32 absmax per block of 64
    weights. Trainable parameters (the LoRA) are not counted."""
    total = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()] if not t.requires_grad)
    if quantize is None:
        return total
    for layer in module.modules():
        if type(layer) is torch.nn.Linear and not layer.weight.requires_grad:
            weight = layer.weight
            total -= weight.numel() * weight.element_size()
            if quantize == "int8":
                total += weight.numel() + weight.shape[0] * 5
            elif quantize == "nf4":
                total += weight.numel() // 2 + -(-weight.numel() // 64) * 4
            else:
                raise ValueError(f"unknown quantization method {quantize!r}")
    return total


def graph_bytes(backbone: Backbone, loss_fn: SimilarityLoss, config: SisoConfig) -> dict[str, int]:
    """Bytes of the storages the autograd graph of one iteration keeps for backward, by part (`PARTS`): the denoiser's
    steps with gradient, the VAE decode and the similarity networks; weights and buffers are left out (counted
    apart).

    The iteration is the loop's own: `Backbone.sample` then ``loss_fn``, inside `siso.accel.accelerated` with
    ``config.accel``, with ``config.memory.gradient_checkpointing``, attention as `FusedAttention` runs it. Works on
    the meta device (the estimate) and on real tensors alike (the tests compare the two).
    """
    optim = config.optim
    modules = [m for m in (*backbone.pipe.components.values(), loss_fn) if isinstance(m, torch.nn.Module)]
    weights: set[int] = set()  # parameters (the LoRA too) and buffers: counted apart
    kept: dict[int, tuple[str, torch.UntypedStorage]] = {}  # the storage itself: its address is not reused
    part = "denoiser"

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            kept.setdefault(storage._cdata, (part, storage))
        return tensor

    def decoding(module, args) -> None:
        nonlocal part
        part = "vae decode"

    with torch.no_grad():
        cond = backbone.encode_prompt(config.train_prompt, optim.guidance_scale)
    handle = backbone.pipe.vae.decoder.register_forward_pre_hook(decoding)
    checkpointing = backbone.gradient_checkpointing() if config.memory.gradient_checkpointing else nullcontext()
    try:
        with (
            checkpointing,
            accelerated(backbone, config.accel, loss_fn.nets.values()),
            _schedule_on_cpu(backbone),
            FusedAttention(),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        ):
            # the weights as the block left them (the VAE's in channels-last copies)
            weights.update(t.untyped_storage()._cdata for m in modules for t in [*m.parameters(), *m.buffers()])
            generator = torch.Generator().manual_seed(optim.seed)
            image = backbone.sample(cond, generator, optim.num_inference_steps, optim.grad_steps, optim.guidance_scale)
            part = "similarity"
            loss_fn(image)
    finally:
        handle.remove()
    return {name: sum(s.nbytes() for p, s in kept.values() if p == name) for name in PARTS}


def estimate_memory(backbone: Backbone, loss_fn: SimilarityLoss, config: SisoConfig) -> dict:
    """GB of GPU memory that optimizing ``backbone`` (with LoRA added, `siso.lora.add_lora`) against ``loss_fn``
    takes under ``config`` (its accel settings, steps and guidance) and each memory option of `OPTIONS` (each adds to
    the one before: ``--gradient-checkpointing``, then ``--quantize int8`` or ``nf4``).

    Returns:
        ``parameters_b`` (billions, per component), ``weights_gb`` (the denoiser as each ``--quantize`` stores it,
        the VAE, the similarity networks, the text encoders: not in the estimate), ``lora_adam_gb``,
        ``activations_gb`` (by part, plain and with checkpointing) and ``estimate_gb`` per option.
    """
    pipe = backbone.pipe
    encoders = [getattr(pipe, name) for name in backbone.all_text_encoder_names]
    parts = {"denoiser": [backbone.denoiser], "vae": [pipe.vae], "similarity": [loss_fn], "text encoders": encoders}
    parameters = {
        name: sum(p.numel() for m in modules for p in m.parameters() if not p.requires_grad)
        for name, modules in parts.items()
    }
    weights = {
        "denoiser": weight_bytes(backbone.denoiser),
        "denoiser int8": weight_bytes(backbone.denoiser, "int8"),
        "denoiser nf4": weight_bytes(backbone.denoiser, "nf4"),
        "vae": weight_bytes(pipe.vae),
        "similarity": weight_bytes(loss_fn),
        "text encoders": sum(weight_bytes(m) for m in encoders),
    }
    lora = ADAM_BYTES * sum(p.numel() for p in backbone.denoiser.parameters() if p.requires_grad)
    plain = graph_bytes(backbone, loss_fn, dataclasses.replace(config, memory=MemorySettings()))
    memory = MemorySettings(gradient_checkpointing=True)
    checkpointed = graph_bytes(backbone, loss_fn, dataclasses.replace(config, memory=memory))
    base = weights["vae"] + weights["similarity"] + lora
    estimate = {
        "default": base + weights["denoiser"] + sum(plain.values()),
        "checkpointing": base + weights["denoiser"] + sum(checkpointed.values()),
        "int8": base + weights["denoiser int8"] + sum(checkpointed.values()),
        "nf4": base + weights["denoiser nf4"] + sum(checkpointed.values()),
    }
    return {
        "parameters_b": {name: count / 1e9 for name, count in parameters.items()},
        "weights_gb": {name: b / GB for name, b in weights.items()},
        "lora_adam_gb": lora / GB,
        "activations_gb": {
            "default": {name: b / GB for name, b in plain.items()},
            "checkpointing": {name: b / GB for name, b in checkpointed.items()},
        },
        "estimate_gb": {name: b / GB for name, b in estimate.items()},
    }


def estimate_model(name: str, resolution: int = 512) -> dict:
    """`estimate_memory` of backbone ``name`` (a `siso.bench.architectures.MODELS` name) at its published
    architecture in bf16, ``resolution`` px, with the family's settings and the ``default`` acceleration preset, built
    on the meta device (about ten seconds on a CPU, no memory)."""
    config = config_for(
        SisoConfig, name, train_prompt="a photo of a dog", dtype="bf16", accel=AccelSettings.preset("default")
    )
    backbone = build_backbone(name, "meta", torch.bfloat16, resolution)
    add_lora(backbone, config.lora)
    built = build_similarity("meta", torch.bfloat16)
    dino = DinoEmbedding(built["dino"], config.similarity.dino_resolution)
    nets = {"dino": dino, "ir": ClipImageEmbedding(built["ir"])}
    # The loss as every run builds it (`siso.losses.LossNetworks`), on these networks.
    loss_fn = LossNetworks(config.similarity, "meta", torch.bfloat16, nets=(nets, None)).loss(subject_photos(1))
    return estimate_memory(backbone, loss_fn, config)


def memory_report(estimates: dict[str, dict], resolution: int = 512) -> str:
    """The Markdown table of `estimate_model`'s figures at ``resolution`` px, one row per backbone."""
    lines = [
        f"Estimated GPU memory while optimizing, bf16, {resolution} px (meta device: nothing ran at real size; left "
        "out: the backward pass's transient buffers, the CUDA context, allocator slack)",
        "",
        "| model | parameters: denoiser / VAE / text encoders | weights GB: denoiser (int8, nf4) + VAE + similarity "
        "| LoRA + AdamW GB | activations GB: denoiser + VAE decode + similarity, plain / checkpointing "
        "| estimated GB: default / --gradient-checkpointing / + --quantize int8 / + --quantize nf4 |",
        "|---|---|---|---|---|---|",
    ]
    for model, row in estimates.items():
        p, w, a = row["parameters_b"], row["weights_gb"], row["activations_gb"]
        weights = (
            f"{w['denoiser']:.2f} ({w['denoiser int8']:.2f}, {w['denoiser nf4']:.2f}) + {w['vae']:.2f} "
            f"+ {w['similarity']:.2f}"
        )
        graphs = " / ".join(f"{sum(g.values()):.1f} ({' + '.join(f'{v:.2f}' for v in g.values())})" for g in a.values())
        estimate = " / ".join(f"{row['estimate_gb'][option]:.1f}" for option in OPTIONS)
        lines.append(
            f"| {model} | {p['denoiser']:.2f}B / {p['vae']:.2f}B / {p['text encoders']:.2f}B | {weights} "
            f"| {row['lora_adam_gb']:.2f} | {graphs} | {estimate} |"
        )
    return "\n".join(lines) + "\n"
