"""Start-up notices of dependencies that tell siso's users nothing, silenced one exact message at a time."""

from __future__ import annotations

import logging
import re

# transformers 5 without torchvision (siso does without it: it breaks transformers on this project's torch build)
# announces, when diffusers' pipeline modules import these two image processors, that it falls back to their PIL
# versions, which siso never uses either.
TORCHVISION_FALLBACK = re.compile(
    r"`(CLIPImageProcessor|SiglipImageProcessor)` requires torchvision \(not installed\); falling back to `\1Pil` "
)


class TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' torchvision-fallback notice for `CLIPImageProcessor` and `SiglipImageProcessor` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not TORCHVISION_FALLBACK.match(record.getMessage())


_FILTER = TorchvisionFallbackFilter()


def silence_torchvision_fallback() -> None:
    """Install the filter on the logger that emits the notice; it must run before diffusers' pipelines are imported."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_FILTER)
