"""siso: single-image subject-driven generation (SISO, arXiv 2503.16025) on diffusers backbones."""

from siso.quiet import silence_torchvision_fallback

# Before the imports below, which import diffusers' pipelines: every `siso` command and `import siso` would start
# with transformers' two torchvision-fallback notices.
silence_torchvision_fallback()

from siso.backbones import BACKBONES, Backbone, load_backbone
from siso.config import LoraSettings, OptimSettings, SimilaritySettings, SisoConfig
from siso.images import load_subject
from siso.lora import save_lora
from siso.optimize import EarlyStopping, SisoResult, optimize_subject

__all__ = [
    "BACKBONES",
    "Backbone",
    "EarlyStopping",
    "LoraSettings",
    "OptimSettings",
    "SimilaritySettings",
    "SisoConfig",
    "SisoResult",
    "load_backbone",
    "load_subject",
    "optimize_subject",
    "save_lora",
]
__version__ = "0.1.0"
