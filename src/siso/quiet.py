"""Start-up notices of dependencies that tell siso's users nothing, silenced one exact message at a time.

Each notice is matched on the logger that emits it (a logger's filters do not apply to its children), so every other
message of the same logger still prints.
"""

from __future__ import annotations

import logging
import re

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
# (weight-only) optimizes in fp32 on the CPU (tests/test_memory.py), where bf16 is unusably slow; were a kernel to lack
# a dtype, the first forward pass would fail with an error, not quietly.


class NoticeFilter(logging.Filter):
    """Drops the records of one logger whose message matches ``pattern`` (at its start)."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_FILTERS = {name: NoticeFilter(pattern) for name, pattern in NOTICES.items()}


def silence_notices() -> None:
    """Install the filters on the loggers that emit the notices; it must run before diffusers is imported."""
    for name, notice_filter in _FILTERS.items():
        logging.getLogger(name).addFilter(notice_filter)
