"""siso: single-image subject-driven generation and editing (SISO, arXiv 2503.16025) on diffusers backbones."""

from siso.pages import prefer_huge_pages

# First: PyTorch reads this setting at the process's first CPU tensor, which the imports below make (`siso.pages`).
prefer_huge_pages()

from siso.quiet import silence_notices

# Before the imports below, which import diffusers' pipelines: every `siso` command and `import siso` would start
# with transformers' two torchvision-fallback notices (and, with torchao installed, its start-up notices).
silence_notices()

from siso.backbones import BACKBONES, Backbone, load_backbone
from siso.config import (
    EditConfig,
    EditSettings,
    InversionSettings,
    LoraSettings,
    MemorySettings,
    OptimSettings,
    SimilaritySettings,
    SisoConfig,
)
from siso.editing import EditResult, edit_subject, prepare_scene
from siso.images import load_subject
from siso.lora import save_lora
from siso.optimize import EarlyStopping, SisoResult, optimize_lora, optimize_subject

__all__ = [
    "BACKBONES",
    "Backbone",
    "EarlyStopping",
    "EditConfig",
    "EditResult",
    "EditSettings",
    "InversionSettings",
    "LoraSettings",
    "MemorySettings",
    "OptimSettings",
    "SimilaritySettings",
    "SisoConfig",
    "SisoResult",
    "edit_subject",
    "load_backbone",
    "load_subject",
    "optimize_lora",
    "optimize_subject",
    "prepare_scene",
    "save_lora",
]
__version__ = "0.1.0"
