"""Memory: the command-line memory options, the out-of-memory message, and a peak-memory meter for benchmarks."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from siso.config import QUANTIZE_METHODS, MemorySettings

# What to try, in the order that costs least image quality: the first two leave the images unchanged.
REMEDIES = "--gradient-checkpointing, --quantize int8 (or nf4 on CUDA), --dtype bf16, a smaller --resolution"


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    """The `MemorySettings` flags, shared by ``generate``, ``edit`` and ``eval run``."""
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the denoiser's and VAE decoder's activations in the backward pass: less memory, slower, "
        "same images",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_METHODS,
        help="quantize the frozen denoiser (LoRA stays full precision): int8 (torchao; CPU and CUDA) or nf4 "
        "(bitsandbytes; CUDA only); pip install 'siso[quantize]'",
    )
    parser.add_argument(
        "--keep-text-encoders",
        action="store_true",
        help="keep the text encoders on the device while optimizing (default: moved off, or freed on CPU, once the "
        "prompt is encoded)",
    )


def memory_settings(args: argparse.Namespace) -> MemorySettings:
    return MemorySettings(
        offload_text_encoders=not args.keep_text_encoders,
        gradient_checkpointing=args.gradient_checkpointing,
        quantize=args.quantize,
    )


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU out-of-memory error, or the CPU allocator's (``DefaultCPUAllocator: can't allocate memory``)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


def out_of_memory_message(err: BaseException) -> str:
    """One line that says what ran out and which options use less memory."""
    where = "the GPU" if isinstance(err, torch.OutOfMemoryError) else "the CPU"
    found = re.search(r"Tried to allocate [\d.]+ [KMGT]iB", str(err))
    detail = f" ({found.group(0).lower()})" if found else ""
    return f"out of memory on {where}{detail}; to use less, try {REMEDIES}"


def _vm_peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakMemory:
    """Peak memory of a block, above what was in use when it started.

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). On the CPU: the process's peak resident set size
    (Linux, reset through ``/proc/self/clear_refs``), which also counts allocator slack: compare runs made the same way.

    Example::

        with PeakMemory("cpu") as peak:
            work()
        print(peak.bytes)
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.bytes = 0

    def _used(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmRSS in /proc/self/status")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif sys.platform == "linux":
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        else:
            raise OSError(f"PeakMemory measures CPU memory on Linux only, not on {sys.platform}")
        self._start = self._used()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _vm_peak_rss()
        self.bytes = peak - self._start
