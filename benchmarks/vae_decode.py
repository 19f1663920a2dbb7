"""One lever at a time on the largest part of a CPU iteration: the VAE decode's forward and backward.

The SD-Turbo VAE at its published architecture (random weights), channels-last, decodes one latent and backpropagates
to it, three times; for each call it prints the seconds, what the graph kept for backward (each storage once, weights
excluded), and the kernel's share: CPU seconds in the kernel and page faults (each maps in 4 KiB of fresh memory, or
2 MiB with transparent huge pages; Linux). ``stock``: PyTorch's graph; ``lean``: siso's (`siso.accel.lean`); ``fused``:
the lean graph with the upsamplers as transposed convolutions (`siso.accel.upsample`), siso's default; ``compile``:
``torch.compile`` of the decoder (the first call includes compiling).

    .venv/bin/python benchmarks/vae_decode.py --px 256 --mode stock lean fused compile
"""

from __future__ import annotations

import argparse
import resource
import time
from contextlib import nullcontext

import torch

from siso.accel.lean import lean_graph
from siso.accel.upsample import fused_upsampling
from siso.bench.architectures import build_component, published_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=256, help="image side (the latent is px / 8)")
    parser.add_argument("--mode", nargs="+", default=["stock", "lean"], choices=["stock", "lean", "fused", "compile"])
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = build_component(published_config("sd-turbo")["components"]["vae"], "cpu", torch.float32)
    vae.to(memory_format=torch.channels_last)
    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    latent = torch.randn(1, 4, args.px // 8, args.px // 8)
    for mode in args.mode:
        decoder = torch.compile(vae.decoder) if mode == "compile" else vae.decoder
        for call in range(3):
            kept: dict[int, int] = {}

            def pack(t, kept=kept):
                if t.untyped_storage().data_ptr() not in weights:
                    kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            z = latent.clone().requires_grad_()
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            with (
                lean_graph(vae) if mode in ("lean", "fused") else nullcontext(),
                fused_upsampling(vae) if mode == "fused" else nullcontext(),
            ):
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    image = decoder(vae.post_quant_conv(z))
                image.square().mean().backward()
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            kernel = after.ru_stime - before.ru_stime
            faults = (after.ru_minflt - before.ru_minflt) / 1e6
            print(
                f"{mode:8s} call {call}: {seconds:6.2f} s, graph kept {sum(kept.values()) / 1e9:.2f} GB, "
                f"kernel {kernel:.1f} CPU s, {faults:.2f} M page faults",
                flush=True,
            )


if __name__ == "__main__":
    main()
