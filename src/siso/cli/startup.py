"""What the ``siso`` console command sets up for itself before it imports anything heavy; `import siso` does none of it.

- The CPU allocator (`use_tcmalloc`): PyTorch's CPU guidance is a faster ``malloc`` through ``LD_PRELOAD``. Where
  tcmalloc (gperftools' ``libtcmalloc_minimal``) is installed and nothing is preloaded yet, the command runs itself
  again once with it preloaded, and says so in one line; ``SISO_TCMALLOC=0`` turns this off. SD-Turbo at 512 px on
  the CPU, against glibc's own ``malloc``: faster, with a lower peak that stays flat (benchmarks/RESULTS.md).
- Start-up notices of dependencies that tell siso's users nothing (`quiet_notices`), silenced one exact message at
  a time. Each notice is matched on the logger that emits it (a logger's filters do not apply to its children), so
  every other message of the same logger still prints.

Standard library only: this module runs before torch is imported.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import sys

NOTICES: dict[str, re.Pattern] = {
    # transformers 5 without torchvision (siso does without it: it breaks transformers on this project's torch build)
    # announces, when diffusers' pipeline modules import these two image processors, that it falls back to their PIL
    # versions, which siso never uses either.
    "transformers.utils.import_utils": re.compile(
        r"`(CLIPImageProcessor|SiglipImageProcessor)` requires torchvision \(not installed\); falling back to "
        r"`\1Pil` "
    ),
    # torchao (the --quantize int8 backend), which diffusers imports whenever it is installed: its optional kernels
    # for CUDA sm90 / MX formats do not load on other machines, and siso uses neither.
    "torchao": re.compile(r"Failed to load \S*torchao/_C_(mxfp8|cutlass_90a)\S*\.so: "),
    # torchao registers two enums the way torch 2.13 deprecates; nothing for a siso user to do.
    "torch.utils._pytree": re.compile(
        r"<enum '(KernelPreference|ScaleCalculationMode)'> is an Enum subclass and is now natively supported"
    ),
    # diffusers cannot import torchao 0.18's old tensor classes; they matter only for checkpoints saved quantized,
    # which siso never loads (it quantizes on loading).
    "diffusers.quantizers.torchao.torchao_quantizer": re.compile(
        r"Unable to import `torchao` Tensor objects\.|You are trying to set torch_dtype to torch\.float(32|16) for "
        r"integer quantization, but only bfloat16 is supported right now\."
    ),
}
# About the second diffusers notice: it is said of every int quantization in any dtype but bf16. siso's --quantize int8
# (weight-only) optimizes in fp32 on the CPU (tests/backbones/test_quantize.py), where bf16 is unusably slow; were a
# kernel to lack a dtype, the first forward pass would fail with an error, not quietly.


class NoticeFilter(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern`` (at its start)."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_FILTERS = {name: NoticeFilter(pattern) for name, pattern in NOTICES.items()}


def quiet_notices() -> None:
    """Install the filters on the loggers that emit the notices; it must run before diffusers is imported."""
    for name, notice_filter in _FILTERS.items():
        logging.getLogger(name).addFilter(notice_filter)


# Set to 0 to keep the C library's own malloc.
TCMALLOC_ENV = "SISO_TCMALLOC"
# Commands that run no model: not worth a second start.
_LIGHT = ("-h", "--help")
_LIGHT_COMMANDS = ("subjects",)  # commands that load no model


def tcmalloc_library() -> str | None:
    """The name of gperftools' tcmalloc library as the dynamic linker finds it (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def use_tcmalloc(argv: list[str]) -> None:
    """Run this command again with tcmalloc preloaded, once, where that applies; otherwise return.

    It applies on Linux when tcmalloc is installed (Debian and Ubuntu: ``libtcmalloc-minimal4``; Fedora:
    ``gperftools-libs``; Arch: ``gperftools``), ``LD_PRELOAD`` is empty (a preloaded allocator, or the second start,
    stays as it is), ``SISO_TCMALLOC`` is not 0 and the command runs models (not ``--help``, not ``siso subjects``).

    Args:
        argv: The command's arguments (after ``siso``).
    """
    if os.environ.get(TCMALLOC_ENV) == "0" or os.environ.get("LD_PRELOAD") or not argv:
        return
    if argv[0] in _LIGHT_COMMANDS or any(arg in _LIGHT for arg in argv):
        return
    library = tcmalloc_library()
    if library is None:
        return
    print(f"siso: CPU memory through tcmalloc ({library}); {TCMALLOC_ENV}=0 keeps the system's malloc", file=sys.stderr)
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "LD_PRELOAD": library})
