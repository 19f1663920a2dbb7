"""siso: single-image subject-driven generation and editing (SISO, arXiv 2503.16025) on diffusers backbones.

Importing siso changes nothing in the process (no environment variable, allocator setting or log filter) and loads
its parts on first use: ``siso.load_backbone`` imports the backbones then. The ``siso`` command sets up what its
commands need (`siso.cli.startup`).
"""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "BACKBONES": "siso.backbones",
    "Backbone": "siso.backbones",
    "load_backbone": "siso.backbones",
    "Box": "siso.compose",
    "RegionalSampler": "siso.compose.regional",
    "read_saved": "siso.compose.saved",
    "Library": "siso.library",
    "Subject": "siso.compose",
    "ComposeSettings": "siso.config",
    "AccelSettings": "siso.config",
    "EditConfig": "siso.config",
    "RefineConfig": "siso.config",
    "EditSettings": "siso.config",
    "FastSettings": "siso.config",
    "InversionSettings": "siso.config",
    "LoraSettings": "siso.config",
    "MemorySettings": "siso.config",
    "OptimSettings": "siso.config",
    "SimilaritySettings": "siso.config",
    "SisoConfig": "siso.config",
    "EditResult": "siso.editing",
    "edit_subject": "siso.editing",
    "prepare_scene": "siso.editing",
    "load_subject": "siso.images",
    "save_lora": "siso.lora",
    "CompositionLoss": "siso.losses",
    "SimilarityLoss": "siso.losses",
    "EarlyStopping": "siso.optimize",
    "SisoResult": "siso.optimize",
    "optimize_generation": "siso.optimize",
    "optimize_lora": "siso.optimize",
    "optimize_subject": "siso.optimize",
    "LoadedSubject": "siso.personalization",
    "Personalized": "siso.personalization",
    "personalize": "siso.personalization",
    "use_subject": "siso.personalization",
    "Models": "siso.runs.models",
    "RunSpec": "siso.runs.spec",
    "run": "siso.runs.run",
    "load_saved_subject": "siso.lora",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'siso' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
