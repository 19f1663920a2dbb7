"""What each memory option (`siso.config.MemorySettings`) saves: measured on tiny models, estimated at real size.

1. Tiny models, measured (any machine): for each backbone family and option set, a fresh process loads the tiny
   backbone and runs 3 SISO iterations. Reported: the peak memory of load + optimization above the process's memory
   before loading (``siso.runs.memory.PeakMemory``: CUDA allocator peak on a GPU, peak RSS on a CPU, which also counts
   allocator slack and so is noisy at this size), the bytes of model weights left on the compute device during
   optimization, the bytes the autograd graph of one iteration keeps for backward, and seconds per iteration.
2. Real size, weights only (no run): exact parameter counts of the published architectures
   (``src/siso/bench/configs``, built on the meta device) turned into the weights each option leaves on the
   GPU while optimizing, in bf16. Activations at real size need a GPU and are not in this table.

    .venv/bin/python benchmarks/memory.py [--families sd sdxl flux sana] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

OPTIONS = {
    "none (text encoders kept)": {"offload_text_encoders": False},
    "offload text encoders (default)": {},
    "+ gradient checkpointing": {"gradient_checkpointing": True},
    "+ quantize int8": {"quantize": "int8"},
    "+ checkpointing + int8": {"gradient_checkpointing": True, "quantize": "int8"},
}
TINY = {"sd": ("make_sd_turbo", None, 0.0, 1, 1), "sdxl": ("make_sdxl_turbo", None, 0.0, 1, 1),
        "flux": ("make_flux_schnell", 32, 0.0, 1, 1), "sana": ("make_sana", 64, 4.5, 20, 3)}  # fmt: skip
MB = 2**20


def nbytes(tensor) -> int:
    """Bytes a tensor holds; a quantized tensor subclass counts its packed data and scales."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(nbytes(getattr(tensor, name)) for name in names)
    return tensor.untyped_storage().nbytes()


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    from siso.backbones import load_backbone
    from siso.config import MemorySettings, OptimSettings, SimilaritySettings, SisoConfig
    from siso.images import tensor_to_pil
    from siso.losses import SimilarityLoss
    from siso.optimize import optimize_subject
    from siso.runs.memory import PeakMemory

    root = Path(spec["root"])
    _, resolution, guidance, steps, grad_steps = TINY[spec["family"]]
    memory = MemorySettings(**spec["memory"])
    config = SisoConfig(
        model=str(root / spec["family"]),
        train_prompt="a photo of a dog",
        resolution=resolution,
        device="cpu",
        similarity=SimilaritySettings(dino_model=str(root / "dino"), ir_model=str(root / "clip")),
        optim=OptimSettings(
            lr=1e-2,
            max_iters=3,
            patience=3,
            min_improvement=0.0,
            num_inference_steps=steps,
            grad_steps=grad_steps,
            guidance_scale=guidance,
        ),
        memory=memory,
    )
    subject = tensor_to_pil(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))[0]
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cpu", torch.float32)
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[id(tensor) if hasattr(tensor, "__tensor_flatten__") else tensor.untyped_storage().data_ptr()] = nbytes(
            tensor
        )
        return tensor

    with PeakMemory("cpu") as peak:
        backbone = load_backbone(config.model, config.dtype, "cpu", resolution, memory.quantize)
        sample = backbone.sample
        graph_bytes = []

        def counting_sample(*args, **kwargs):
            saved.clear()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                image = sample(*args, **kwargs)
            graph_bytes.append(sum(saved.values()))
            return image

        backbone.sample = counting_sample
        result = optimize_subject(backbone, subject, config, loss_fn=loss_fn, progress=False)
        modules = [m for m in backbone.pipe.components.values() if isinstance(m, torch.nn.Module)]
        resident = sum(nbytes(t) for m in modules for t in [*m.parameters(), *m.buffers()])
    return {
        "peak_mb": peak.bytes / MB,
        "weights_on_device_mb": resident / MB,
        "graph_mb": max(graph_bytes) / MB,
        "seconds_per_iteration": sum(h["seconds"] for h in result.history[1:]) / (len(result.history) - 1),
    }


def tiny_table(families: list[str]) -> dict:
    import tiny

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for family in families:
            getattr(tiny, TINY[family][0])(root / family)
        tiny.make_dino(root / "dino")
        tiny.make_clip_vision(root / "clip")
        for family in families:
            for label, memory in OPTIONS.items():
                spec = json.dumps({"root": str(root), "family": family, "memory": memory})
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", spec], capture_output=True, text=True, timeout=600
                )
                if proc.returncode:
                    raise RuntimeError(f"{family} / {label} failed:\n{proc.stderr[-3000:]}")
                results.setdefault(family, {})[label] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  measured {family:5s} {label}", file=sys.stderr)
    return results


def real_size_table() -> dict:
    """Per backbone at real size, bf16, 512 px: GB of weights on the GPU while optimizing under each option, of the
    LoRA and its optimizer state, of the graph kept for backward (`real_size_graph`), and their sum: an estimate
    of the peak that leaves out the backward pass's transient buffers."""
    from architectures import ARCHITECTURES, DENOISERS, build, parameter_counts

    # int8 weight-only: 1 byte per linear weight plus a bf16 scale per output row (about 0.1 %);
    # NF4: half a byte plus an fp32 absmax per block of 64 (bitsandbytes' default, no double quantization).
    linear_bytes = {None: 2.0, "int8": 1.0 + 0.001, "nf4": 0.5 + 4 / 64}
    # The similarity networks stay on the GPU: DINOv2 ViT-L/14 (304M) and the CLIP ViT-H/14 vision tower (632M).
    similarity = (304e6 + 632e6) * 2
    table = {}
    for backbone in ARCHITECTURES:
        counts = parameter_counts(build(backbone))
        denoiser = DENOISERS[backbone]

        def gb(name, quantize=None, counts=counts, denoiser=denoiser):
            c = counts[name]
            per_linear = linear_bytes[quantize] if name == denoiser else 2.0
            return (c["linear"] * per_linear + c["other"] * 2.0) / 1e9

        text = sum(gb(n) for n in counts if n.startswith("text_encoder"))
        base = gb(denoiser) + gb("vae") + similarity / 1e9
        plain, checkpointed = real_size_graph(backbone, False), real_size_graph(backbone, True)
        graph, graph_ckpt = sum(plain["graph"].values()), sum(checkpointed["graph"].values())
        weights = {
            "text encoders kept": base + text,
            "default (text encoders off)": base,
            "int8": base - gb(denoiser) + gb(denoiser, "int8"),
            "nf4": base - gb(denoiser) + gb(denoiser, "nf4"),
        }
        lora = plain["lora_adam"]
        table[backbone] = {
            "parameters_b": {n: (c["linear"] + c["other"]) / 1e9 for n, c in counts.items()},
            "weights_gb": weights,
            "lora_adam_gb": lora,
            "graph_gb": {"plain": plain["graph"], "checkpointing": checkpointed["graph"]},
            "estimate_gb": {
                "default": weights["default (text encoders off)"] + lora + graph,
                "+ checkpointing": weights["default (text encoders off)"] + lora + graph_ckpt,
                "+ checkpointing + int8": weights["int8"] + lora + graph_ckpt,
                "+ checkpointing + nf4": weights["nf4"] + lora + graph_ckpt,
            },
        }
    return table


def _denoiser_inputs(backbone: str, device: str, dtype) -> tuple[dict, int]:
    """One denoiser call's inputs at 512 px, and how many calls keep their graph (the family's grad steps)."""

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt)

    if backbone == "sd-turbo":
        return {"sample": randn(1, 4, 64, 64), "timestep": 999, "encoder_hidden_states": randn(1, 77, 1024)}, 1
    if backbone == "sdxl-turbo":
        cond = {"text_embeds": randn(1, 1280), "time_ids": randn(1, 6)}
        return {"sample": randn(1, 4, 64, 64), "timestep": 999, "encoder_hidden_states": randn(1, 77, 2048),
                "added_cond_kwargs": cond}, 1  # fmt: skip
    if backbone == "flux-schnell":
        inputs = {
            "hidden_states": randn(1, 1024, 64), "timestep": randn(1), "pooled_projections": randn(1, 768),
            "encoder_hidden_states": randn(1, 256, 4096), "txt_ids": randn(256, 3, dt=torch.float32),
            "img_ids": randn(1024, 3, dt=torch.float32), "return_dict": False,
        }  # fmt: skip
        return inputs, 1
    # Sana: CFG batch of 2, 256 prompt tokens (the pipeline keeps the first and the last 255), grad through 3 steps
    mask = torch.ones(2, 256, device=device, dtype=torch.int64)
    return {"hidden_states": randn(2, 32, 16, 16), "encoder_hidden_states": randn(2, 256, 2304),
            "encoder_attention_mask": mask, "timestep": randn(2), "return_dict": False}, 3  # fmt: skip


class _FusedAttention(torch.autograd.Function):
    """Attention that keeps for backward what a fused kernel keeps: q, k, v, the output, the row log-sum-exp."""

    @staticmethod
    def forward(ctx, query, key, value, kwargs):
        out = _SDPA(query, key, value, **kwargs)
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("shape accounting only")


_SDPA = torch.nn.functional.scaled_dot_product_attention


@contextlib.contextmanager
def fused_attention():
    """Route ``F.scaled_dot_product_attention`` (what diffusers and transformers call) through `_FusedAttention`."""

    def attention(query, key, value, **kwargs):
        return _FusedAttention.apply(query, key, value, kwargs)

    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA


def real_size_graph(
    backbone: str, checkpointing: bool, device: str = "meta", dtype: torch.dtype = torch.bfloat16
) -> dict[str, float]:
    """GB of activations one SISO iteration keeps for backward at real size, bf16, 512 px, by part; and of the LoRA
    with its AdamW state (fp32 weights, gradients and two moments: 16 bytes per parameter).

    Runs the published architectures on the meta device (shapes only, no memory or compute) under a saved-tensor
    hook and sums the storages the graph keeps, without the weights (already counted), with siso's lean graph and
    fused upsampling. Attention is modelled as a fused GPU kernel (flash / memory-efficient), which keeps q, k, v,
    the output and a row log-sum-exp, not the N x N attention matrix that the meta device's plain-math path would
    keep. With ``device="cpu"`` the same runs on real tensors (slow at this size; it checks the meta accounting).
    """
    import torch.nn.functional as F
    from architectures import DENOISERS, build, similarity_networks
    from peft import LoraConfig

    from siso.accel.lean import lean_graph
    from siso.accel.upsample import fused_upsampling
    from siso.backbones import BACKBONES

    modules = build(backbone, device)
    nets = similarity_networks(device)
    denoiser, vae = modules[DENOISERS[backbone]], modules["vae"]
    for module in (denoiser, vae, *nets.values()):
        module.requires_grad_(False).to(dtype)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(BACKBONES[backbone][1].lora_targets)))
    for p in denoiser.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # siso keeps LoRA weights in fp32
    if checkpointing:
        for module in (denoiser, vae):
            if module._supports_gradient_checkpointing:
                module.enable_gradient_checkpointing()
    weights = {p.untyped_storage()._cdata for m in (denoiser, vae, *nets.values()) for p in m.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in weights:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    parts, alive = {}, []  # outputs held until the end: a freed graph's storage addresses would be reused
    inputs, grad_steps = _denoiser_inputs(backbone, device, dtype)
    # siso's lean graph (`siso.accel.lean`: frozen convolutions keep no input, GroupNorm -> SiLU one tensor, GEGLU two
    # halves) and fused upsampling (`siso.accel.upsample`: the upsampled tensor is never made).
    with (
        fused_attention(),
        fused_upsampling(denoiser, vae),
        lean_graph(denoiser, vae),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        for _ in range(grad_steps):
            alive.append(denoiser(**inputs))
        parts["denoiser"] = sum(saved.values()) / 1e9
        saved.clear()
        channels = vae.config.latent_channels
        size = 16 if backbone == "sana" else 64
        latents = torch.randn(1, channels, size, size, device=device, dtype=dtype, requires_grad=True)
        image = vae.decode(latents, return_dict=False)[0]
        alive.append(image)
        parts["vae decode"] = sum(saved.values()) / 1e9
        saved.clear()
        image = image.float().clamp(0, 1).to(dtype)
        for name, side in (("dino", 518), ("ir", 224)):
            resized = F.interpolate(image, size=(side, side), mode="bicubic", align_corners=False)
            alive.append(nets[name](pixel_values=resized))
        parts["similarity"] = sum(saved.values()) / 1e9
    lora = sum(p.numel() for p in denoiser.parameters() if p.requires_grad)
    return {"graph": parts, "lora_adam": lora * 16 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(TINY), choices=list(TINY))
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    tiny_results = tiny_table(args.families)
    print("## Tiny models, CPU, fp32, 3 iterations (measured)\n")
    print("| family | options | peak MB (RSS) | weights on device MB | graph kept for backward MB | s/iter |")
    print("|---|---|---|---|---|---|")
    for family, rows in tiny_results.items():
        for label, r in rows.items():
            print(f"| {family} | {label} | {r['peak_mb']:.1f} | {r['weights_on_device_mb']:.2f} | "
                  f"{r['graph_mb']:.2f} | {r['seconds_per_iteration']:.3f} |")  # fmt: skip
    real = real_size_table()
    print("\n## Real size, bf16, 512 px: estimated from the published architectures (meta device, no run)\n")
    print(
        "| backbone | weights GB: text encoders kept / default / int8 / nf4 | LoRA + AdamW GB | graph for backward "
        "GB: plain / checkpointing (denoiser + VAE decode + similarity) | estimate GB: default / + checkpointing / "
        "+ checkpointing + int8 / + checkpointing + nf4 |"
    )
    print("|---|---|---|---|---|")
    for backbone, row in real.items():
        w, g, e = row["weights_gb"], row["graph_gb"], row["estimate_gb"]
        graph = " / ".join(
            f"{sum(parts.values()):.1f} ({' + '.join(f'{v:.2f}' for v in parts.values())})" for parts in g.values()
        )
        print(f"| {backbone} | " + " / ".join(f"{v:.1f}" for v in w.values()) + f" | {row['lora_adam_gb']:.2f} | "
              f"{graph} | " + " / ".join(f"{v:.1f}" for v in e.values()) + " |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"tiny_cpu": tiny_results, "real_size_weights_gb": real}, indent=2))


if __name__ == "__main__":
    main()
