"""Typed, validated configuration of a SISO run: `SisoConfig` (generation), `EditConfig` (editing) and `RefineConfig`
(refining), each made of
one settings dataclass per stage, validated with clear errors when built.

Defaults follow the SISO paper (arXiv 2503.16025) unless the docstring says otherwise; the README has a table that
maps each default to the paper's and the reference code's value.
"""

from siso.config.accel import ACCEL_PRESETS, AccelSettings
from siso.config.compose import MAX_SUBJECTS, ComposeSettings
from siso.config.editing import (
    BACKGROUND_TARGETS,
    INVERSION_METHODS,
    EditConfig,
    EditSettings,
    InversionSettings,
)
from siso.config.fidelity import NEGATIVE_KINDS, IPAdapterSettings, NegativeSettings
from siso.config.refining import CHECK_MODEL, REFINE_STRENGTH, STARTS, RefineConfig, RefineSettings
from siso.config.run import SisoConfig
from siso.config.settings import (
    DTYPES,
    FAST_DINO_RESOLUTION,
    QUANTIZE_METHODS,
    SEED_MAX,
    SEED_MIN,
    FastSettings,
    LoraSettings,
    MemorySettings,
    OptimSettings,
    SimilaritySettings,
    check_seed,
    with_defaults,
)

__all__ = [
    "ACCEL_PRESETS",
    "BACKGROUND_TARGETS",
    "CHECK_MODEL",
    "DTYPES",
    "FAST_DINO_RESOLUTION",
    "INVERSION_METHODS",
    "MAX_SUBJECTS",
    "NEGATIVE_KINDS",
    "QUANTIZE_METHODS",
    "REFINE_STRENGTH",
    "SEED_MAX",
    "SEED_MIN",
    "STARTS",
    "AccelSettings",
    "ComposeSettings",
    "EditConfig",
    "EditSettings",
    "FastSettings",
    "IPAdapterSettings",
    "InversionSettings",
    "LoraSettings",
    "MemorySettings",
    "NegativeSettings",
    "OptimSettings",
    "RefineConfig",
    "RefineSettings",
    "SimilaritySettings",
    "SisoConfig",
    "check_seed",
    "with_defaults",
]
