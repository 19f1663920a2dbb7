"""Transparent huge pages for PyTorch's CPU tensors: one page fault per 2 MiB instead of one per 4 KiB.

A SISO iteration on a CPU makes and frees gigabytes of large tensors (the VAE decoder's 67-268 MiB activations and
gradients); every fresh one is faulted in page by page. PyTorch advises the kernel to back CPU tensors over 2 MiB
with huge pages (``madvise(MADV_HUGEPAGE)``) when the environment variable ``THP_MEM_ALLOC_ENABLE`` is 1, and reads
it once, at the process's first CPU tensor. `import siso` therefore sets it (unless it is already set) before
importing anything that makes a tensor. SD-Turbo at 512 px on the development CPU, siso's default alone, back to back:
43.0 -> 40.0 s per iteration, 3.5 -> 0.35 million page faults per iteration, peak 13.76 -> 13.45 GB
(benchmarks/RESULTS.md). The images are unchanged: it is only how memory is mapped.

It has no effect when torch made a CPU tensor before ``import siso``, on systems other than Linux, or where the
system's huge pages are off (``/sys/kernel/mm/transparent_hugepage/enabled`` at ``never``). To turn it off, set
``THP_MEM_ALLOC_ENABLE=0`` in the environment. Processes started from this one inherit the setting.

Standard library only: this module runs before torch is imported.
"""

from __future__ import annotations

import os
import sys

ENV = "THP_MEM_ALLOC_ENABLE"
# The environment's own setting, before siso's default (the bench's `reference` configuration runs with it).
USER_SETTING = os.environ.get(ENV)


def prefer_huge_pages() -> None:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` on Linux unless the environment already says something."""
    if sys.platform == "linux":
        os.environ.setdefault(ENV, "1")


def huge_pages_requested() -> bool:
    """Whether this process asked PyTorch for huge pages (what the environment says now: it takes effect only if it
    said so before torch made its first CPU tensor)."""
    return sys.platform == "linux" and os.environ.get(ENV) == "1"
