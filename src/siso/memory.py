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
        "peak and slower iterations (SD-Turbo at 512 px: 15.2 GB and 40 s, against siso's 13.2 GB and 33 s)",
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
# ... if the peak plus the heap's free memory stays under this share of what the process can hold (`heap_fits`).
HEAP_FIT_SHARE = 0.9
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


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later): the heap's figures in bytes."""

    _FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS.split()]


def _heap_free(libc) -> int | None:
    """Bytes free inside glibc's heap (``mallinfo2().fordblks``, all arenas), or None before glibc 2.33."""
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


# A memory cgroup's limit and use: v2 (``max`` for no limit) and v1.
_CGROUP_V2_FILES = ("memory.max", "memory.current")
_CGROUP_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes")


def memory_room(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes of memory the system can still give this process (Linux): ``MemAvailable``, or less where the process's
    memory cgroup (v2 or v1, as in a container) has a limit closer to its use. None where it cannot be read."""
    try:
        meminfo = (proc / "meminfo").read_text()
        own = (proc / "self" / "cgroup").read_text()
    except OSError:
        return None
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    if found is None:
        return None
    room = int(found.group(1)) * 1024
    for line in own.splitlines():  # "0::/path" (v2) or "4:memory:/path" (v1)
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, files = cgroups, _CGROUP_V2_FILES
        elif "memory" in controllers.split(","):
            root, files = cgroups / "memory", _CGROUP_V1_FILES
        else:
            continue
        for folder in (root / path.lstrip("/"), root):  # as the host names it, or the namespace's root (a container)
            limit, used = (_read_int(folder / name) for name in files)
            if limit is not None and used is not None:
                if limit < 2**60:  # v1 writes a huge number for no limit
                    room = min(room, max(limit - used, 0))
                break
    return room


def heap_fits(free: int, resident: int, peak: int, room: int) -> bool:
    """Whether ``free`` bytes of heap may stay resident for the next phases of an iteration: its peak (``peak``, which
    the next phases stay under without the heap) plus all of them must stay under `HEAP_FIT_SHARE` of the most the
    process can hold (what it holds now, ``resident``, plus the ``room`` the system can still give it)."""
    return peak + free <= HEAP_FIT_SHARE * (resident + room)


def _keep_heap(libc) -> bool:
    """Whether the heap's free memory fits beside the process's peak (`heap_fits`), read from the system now."""
    free, room = _heap_free(libc), memory_room()
    if free is None or room is None:
        return False
    try:
        resident, peak = _process_memories("VmRSS", "VmHWM")
    except OSError:  # (a kernel that does not report them): give the heap back
        return False
    return heap_fits(free, resident, peak, room)


@contextmanager
def reuse_heap(decoder: torch.nn.Module) -> Iterator[bool]:
    """Inside the block, memory freed in one phase of an iteration serves the next phases from glibc's heap, which is
    given back to the system where the peak would otherwise count it (Linux with glibc; meant for optimizing on a CPU,
    after `release_freed_memory`).

    A fresh block is zeroed by the kernel page by page (most of the CPU time an iteration spends in the kernel), so
    what matters is which phases reuse which memory. Inside the block, blocks under 32 MiB come from the heap (the
    threshold glibc's own settles at) and a free at the heap's top gives nothing back (trim threshold 1 GiB). The VAE
    decoder's backward takes all its blocks from the heap (``M_MMAP_MAX`` 0; its gradients shrink as it goes, 512 px
    down to 64 px at SD-Turbo's size, so the holes that freed blocks leave serve the later ones). What it leaves
    serves the denoiser's backward and the next iteration's denoiser and decoder forward, if it fits: when the
    decoder's backward ends, the heap is kept only if the iteration's peak plus all the heap's free memory stays
    under 90 % of the most the process can hold (`heap_fits`, from ``mallinfo2``, ``/proc`` and the memory cgroup),
    and given back otherwise (SD-Turbo at 768 and 1024 px on a 24 GB machine, or at 512 px on a 16 GB one).

    The heap's free pages are also given back (``malloc_trim``) when the decoder's forward ends, so that what was not
    reused is not resident while the similarity networks build their graph (the iteration's peak), and when the
    decoder's backward starts, so that the similarity networks' graph, just freed, is not resident beside the
    decoder's gradients. Given back at those points, the peak holds (kept throughout, the heap fragments and the peak
    creeps): at SD-Turbo's 512 px, 13.1-13.3 GB for 18 iterations, up to 13.85 GB by the 21st; the heap's free
    memory grows as it fragments, so the rule gives it back more often in long runs. On exit the settings of
    `release_freed_memory` come back and the heap's free pages are given back. SD-Turbo at 512 px on a CPU, back to
    back with the earlier default: 36.0 -> 32.6 s per iteration, 11.4 -> 7.65 CPU seconds in the kernel, peak
    13.4-13.5 -> 13.2-13.3 GB (benchmarks/RESULTS.md).

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
        if grad is not None and not _keep_heap(libc):
            libc.malloc_trim(0)  # the decoder's freed gradients would not fit beside the next peak

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


def _process_memories(*fields: str) -> list[int]:
    """Memory figures of this process in bytes from one read of Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``,
    ...), in the order asked."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0]) * 1024
    missing = [field for field in fields if field not in found]
    if missing:
        raise OSError(f"no {', '.join(missing)} in /proc/self/status")
    return [found[field] for field in fields]


def _process_memory(field: str) -> int:
    """A memory figure of this process in bytes from Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    return _process_memories(field)[0]


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
