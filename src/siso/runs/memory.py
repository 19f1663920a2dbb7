"""Memory: the peak of a block of work (`PeakMemory`), this process's figures and C allocator, and the one-line
message of an out-of-memory error."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

__all__ = [
    "PeakMemory",
    "allocator",
    "is_out_of_memory",
    "out_of_memory_message",
    "process_memories",
    "process_memory",
]


# What to try, in the order that costs least image quality: checkpointing leaves the images unchanged. On a CPU,
# bf16 is no remedy (most CPUs lack it and run it ~250x slower) and nf4 does not run.
REMEDIES = {
    "GPU": "--gradient-checkpointing, --quantize nf4 (or int8), --dtype bf16 if you chose fp32, a smaller --resolution",
    "CPU": "--gradient-checkpointing, --quantize int8, a smaller --resolution",
}


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


def process_memories(*fields: str) -> list[int]:
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


def process_memory(field: str) -> int:
    """A memory figure of this process in bytes from Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    return process_memories(field)[0]


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
        return process_memory("VmRSS")

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
            self.peak = process_memory("VmHWM")  # the peak resident set size
        self.bytes = self.peak - self._start

    def record(self) -> dict:
        """For metrics.json: ``peak_memory_gb`` and what it counts (``None`` where nothing was measured)."""
        return {"peak_memory_gb": self.peak / 1e9 if self.kind else None, "peak_memory_kind": self.kind}


def allocator() -> str:
    """The C allocator this process runs on: ``tcmalloc`` or ``jemalloc`` when ``LD_PRELOAD`` names one that is
    loaded (Linux), else ``malloc`` (the C library's own)."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name in ("tcmalloc", "jemalloc"):
        if name in preloaded and name in maps:
            return name
    return "malloc"
