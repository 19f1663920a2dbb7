"""How the app runs (`AppSettings`) and its limits, apart from the page and the work (no Gradio, no models)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from siso.config import CHECK_MODEL, SimilaritySettings


def default_root() -> Path:
    """Where the app writes its runs unless told: ``siso/app`` in the user's data folder (``$XDG_DATA_HOME``, else
    ``~/.local/share``), never the folder the app was started from (a checkout, say)."""
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "siso" / "app"


MAX_UPLOAD_MB = 20.0
MAX_PIXELS = 40_000_000  # about 8000 x 5000
MAX_ITERS_LIMIT = 1000
MAX_IMAGES = 16
MAX_PHOTOS = 10  # of one subject, each held in memory while it runs (most people have three to five)


@dataclass
class AppSettings:
    """How the app runs.

    Attributes:
        model: The backbone (a name or a diffusers folder), loaded once.
        root: Every run is written under ``root/<browser session>/``, never elsewhere (`default_root`: the user's
            data folder).
        device: Torch device (``None``: cuda, else mps, else cpu).
        dtype: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        similarity: The similarity networks (DINOv2, the IR model).
        max_upload_mb: The largest upload accepted, in MB.
        max_pixels: The most pixels an uploaded photo may have.
        optim: Settings for every run beyond the page's (``OptimSettings`` fields; the family's defaults
            otherwise), e.g. ``{"patience": 20}``.
        check_model: The refine's check network (`siso.config.RefineSettings.check_model`).
        detector, segmenter: Grounding DINO and SAM, to find a subject in the image to refine by its class;
            ``None``: the refine's defaults (`siso.runs.jobs.RefineJob`).
        library: The library of saved subjects that "Save as" writes and the Generate tab lists; ``None``:
            `siso.library.default_root` (``$SISO_LIBRARY``, else the user's data folder).
    """

    model: str = "sdxl-turbo"
    root: Path = field(default_factory=default_root)
    device: str | None = None
    dtype: str = "auto"
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    max_upload_mb: float = MAX_UPLOAD_MB
    max_pixels: int = MAX_PIXELS
    optim: dict = field(default_factory=dict)
    check_model: str = CHECK_MODEL
    detector: str | None = None
    segmenter: str | None = None
    library: Path | None = None

    def __post_init__(self):
        self.root = Path(self.root)
        if not (self.max_upload_mb > 0 and math.isfinite(self.max_upload_mb)):
            raise ValueError(f"--max-upload-mb must be more than 0, got {self.max_upload_mb:g}")
        if self.max_pixels < 64 * 64:
            raise ValueError(f"max_pixels must be at least {64 * 64}, got {self.max_pixels}")
