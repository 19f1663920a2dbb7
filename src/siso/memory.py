"""Memory: the command-line memory options, the out-of-memory message, and a peak-memory meter for benchmarks."""

from __future__ import annotations

import argparse
import ctypes
import functools
import platform
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from siso.config import QUANTIZE_METHODS, MemorySettings

# What to try, in the order that costs least image quality: checkpointing leaves the images unchanged. On a CPU,
# bf16 is no remedy (most CPUs lack it and run it ~250x slower) and nf4 does not run.
REMEDIES = {
    "GPU": "--gradient-checkpointing, --quantize nf4 (or int8), --dtype bf16 if you chose fp32, a smaller --resolution",
    "CPU": "--gradient-checkpointing, --quantize int8, a smaller --resolution",
}


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
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="on a CPU (Linux), leave the C allocator (glibc) at its own settings instead of siso's, which reuse "
        "freed memory between the phases of an iteration and give it back where the peak would count it: a higher "
        "peak (SD-Turbo at 512 px: 15.2 GB against 13.5 before siso's were made faster) and, with huge pages, "
        "no faster",
    )


def memory_settings(args: argparse.Namespace) -> MemorySettings:
    return MemorySettings(
        offload_text_encoders=not args.keep_text_encoders,
        gradient_checkpointing=args.gradient_checkpointing,
        quantize=args.quantize,
        release_freed_memory=not args.keep_freed_memory,
    )


# Allocations of this size and more get their own mapping (glibc's M_MMAP_THRESHOLD, fixed by
# `release_freed_memory`; glibc's own threshold moves up to 32 MiB as large blocks are freed).
MMAP_THRESHOLD = 4 * 2**20
# While optimizing (`reuse_heap`): blocks under HEAP_THRESHOLD come from the heap, which keeps up to KEEP_HEAP free at
# its top.
HEAP_THRESHOLD = 32 * 2**20
KEEP_HEAP = 2**30
# mallopt's parameter numbers (malloc.h), and glibc's defaults for those `reuse_heap` sets back.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX, _GLIBC_TRIM_THRESHOLD = 65536, 128 * 2**10


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, if it is glibc on Linux (whose ``mallopt`` settings siso uses)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@functools.cache
def release_freed_memory() -> bool:
    """Give freed tensors of `MMAP_THRESHOLD` bytes and more back to the system at once (Linux with glibc).

    glibc serves blocks under its mmap threshold (which rises to 32 MiB as the process frees large blocks) from a heap
    it keeps: freed, they stay resident and serve only later blocks that fit between them. In a SISO iteration on the
    CPU, the similarity networks' graph (DINOv2 at 518 px keeps 5-22 MiB tensors, 1.4 GB in all) is freed before the
    VAE decoder's backward, whose 67-268 MiB tensors cannot reuse it, so the peak counted both. With a fixed 4 MiB
    threshold those tensors are mapped on their own and unmapped when freed. This is the setting outside the
    optimization loop; inside it, `reuse_heap` keeps the heap between iterations and gives it back where the peak
    would count it. Process-wide, and it stays set, so it is applied once per process (the first call's answer is
    kept).

    Returns:
        Whether it was applied (False on other systems and C libraries).
    """
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


@contextmanager
def reuse_heap(decoder: torch.nn.Module) -> Iterator[bool]:
    """Inside the block, memory freed in one phase of an iteration serves the next phases from glibc's heap, which is
    given back to the system twice an iteration, where the peak would otherwise count it (Linux with glibc; meant for
    optimizing on a CPU, after `release_freed_memory`).

    A fresh block is zeroed by the kernel page by page (most of the CPU time an iteration spends in the kernel), so
    what matters is which phases reuse which memory. Inside the block, blocks under 32 MiB come from the heap (the
    threshold glibc's own settles at) and a free at the heap's top gives nothing back (trim threshold 1 GiB). The VAE
    decoder's backward takes all its blocks from the heap (``M_MMAP_MAX`` 0; its gradients shrink as it goes, 512 px
    down to 64 px at SD-Turbo's size, so the holes that freed blocks leave serve the later ones); what it leaves
    serves the denoiser's backward and the next iteration's denoiser and decoder forward. The heap's free pages are
    given back (``malloc_trim``) when the decoder's forward ends, so that what those did not reuse is not resident
    while the similarity networks build their graph (the iteration's peak), and when the decoder's backward starts,
    so that the similarity networks' graph, just freed, is not resident beside the decoder's gradients. Given back at
    those two points only, the heap does not creep from one iteration to the next (kept, it fragments and grows).
    On exit the settings of `release_freed_memory` come back and the heap's free pages are given back. SD-Turbo at
    512 px on a CPU, back to back: 35.5 -> 33.5 s per iteration, 10.8 -> 7.9 CPU seconds in the kernel, peak
    13.4-13.6 -> 13.1-13.2 GB (benchmarks/RESULTS.md).

    Yields:
        Whether it applies (False on other systems and C libraries: then nothing changes).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return

    def started(grad: torch.Tensor) -> None:
        libc.malloc_trim(0)  # the similarity networks' freed graph, back to the system
        libc.mallopt(_M_MMAP_MAX, 0)  # no new mappings: every block from the heap

    def ended(grad: torch.Tensor | None) -> None:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)

    def before(mod, args):
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            args[0].register_hook(ended)  # its gradient is the backward's last result

    def after(mod, args, output):
        libc.malloc_trim(0)  # what the denoiser and the decoder did not reuse: not resident at the loss's peak
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(started)

    libc.mallopt(_M_TRIM_THRESHOLD, KEEP_HEAP)
    libc.mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD)
    handles = [decoder.register_forward_pre_hook(before), decoder.register_forward_hook(after)]
    try:
        yield True
    finally:
        for handle in handles:
            handle.remove()
        ended(None)  # (a backward that failed half-way left the heap on)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU out-of-memory error, or the CPU allocator's (``DefaultCPUAllocator: can't allocate memory``)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


def out_of_memory_message(err: BaseException) -> str:
    """One line that says what ran out and which options use less memory."""
    where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "CPU"
    found = re.search(r"Tried to allocate [\d.]+ [KMGT]iB", str(err))
    detail = f" ({found.group(0).lower()})" if found else ""
    return f"out of memory on the {where}{detail}; to use less, try {REMEDIES[where]}"


def _process_memory(field: str) -> int:
    """A memory figure of this process in bytes from Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


class PeakMemory:
    """Peak memory of a block: ``peak`` (bytes in use at the peak) and ``bytes`` (the peak above the start).

    On CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). On the CPU: the process's peak resident set size
    (Linux, reset through ``/proc/self/clear_refs``), which also counts allocator slack: compare runs made the same way.
    Elsewhere (MPS, other systems) nothing is measured: ``kind`` is ``None`` and the figures stay 0.

    Example::

        with PeakMemory("cpu") as peak:
            work()
        print(peak.bytes)
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.peak = self.bytes = 0
        if self.device.type == "cuda":
            self.kind = "CUDA allocated"
        elif self.device.type == "cpu" and sys.platform == "linux" and Path("/proc/self/clear_refs").exists():
            self.kind = "process RSS"
        else:
            self.kind = None

    def _used(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _process_memory("VmRSS")

    def __enter__(self) -> PeakMemory:
        if self.kind is None:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:  # not allowed here: the peak then includes earlier work
                self.kind = "process RSS (peak since start)"
        self._start = self._used()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _process_memory("VmHWM")  # the peak resident set size
        self.bytes = self.peak - self._start

    def record(self) -> dict:
        """For metrics.json: ``peak_memory_gb`` and what it counts (``None`` where nothing was measured)."""
        return {"peak_memory_gb": self.peak / 1e9 if self.kind else None, "peak_memory_kind": self.kind}
