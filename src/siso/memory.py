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
        help="on a CPU (Linux), leave freed tensors in the C allocator's heap for reuse, and the VAE decoder's "
        "backward to its defaults: a higher peak (SD-Turbo at 512 px: 14.7 instead of 13.5 GB), faster only "
        "without huge pages (THP_MEM_ALLOC_ENABLE=0)",
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
# mallopt's parameter numbers (malloc.h), and glibc's default for the one `backward_from_heap` changes.
_M_MMAP_THRESHOLD, _M_MMAP_MAX = -3, -4
_GLIBC_MMAP_MAX = 65536


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
    threshold those tensors are mapped on their own and unmapped when freed. The cost is page faults when such
    memory is used again: +3 % time at SD-Turbo's real size, measured alone (benchmarks/RESULTS.md). Process-wide, and
    it stays set, so it is applied once per process (the first call's answer is kept).

    Returns:
        Whether it was applied (False on other systems and C libraries).
    """
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1


@contextmanager
def backward_from_heap(module: torch.nn.Module) -> Iterator[bool]:
    """Inside the block, ``module``'s backward passes take their memory from glibc's heap, given back when each ends
    (Linux with glibc; meant for the VAE decoder on a CPU, with `release_freed_memory`).

    Blocks above the mmap threshold are otherwise mapped fresh and unmapped when freed, so each is faulted in page by
    page. The VAE decoder's gradients shrink as its backward goes (512 px down to 64 px at SD-Turbo's size), so the
    holes that freed blocks leave in the heap serve the later ones, and the heap goes back to the system
    (``malloc_trim``) when the backward reaches the decoder's input. SD-Turbo at 512 px on a CPU, back to back:
    46.5 -> 43.5 s per iteration, 4.4-5.2 -> 3.3-3.6 million page faults, the same peak; with huge pages
    (`siso.pages`) it no longer measurably helps (40.2 -> 40.0 s; benchmarks/RESULTS.md). The forward pass is left
    alone: its tensors grow level by level, and the heap's holes would not fit the next level's.

    Yields:
        Whether it applies (False on other systems and C libraries: then nothing changes).
    """
    libc = _glibc()
    if libc is None:
        yield False
        return

    def started(grad: torch.Tensor) -> None:
        libc.mallopt(_M_MMAP_MAX, 0)  # no new mappings: every block from the heap

    def ended(grad: torch.Tensor | None) -> None:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        libc.malloc_trim(0)

    def before(mod, args):
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            args[0].register_hook(ended)  # its gradient is the backward's last result

    def after(mod, args, output):
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(started)

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield True
    finally:
        for handle in handles:
            handle.remove()
        ended(None)  # (a backward that failed half-way left the heap on)


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
