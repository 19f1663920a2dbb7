"""`SisoConfig`: everything that determines a SISO optimization run, made of the settings of each stage
(`siso.config.settings`) and how its iterations run (`siso.config.accel`)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from siso.config.accel import AccelSettings
from siso.config.compose import ComposeSettings
from siso.config.fidelity import IPAdapterSettings, NegativeSettings
from siso.config.fields import setting
from siso.config.settings import (
    DTYPES,
    FastSettings,
    LoraSettings,
    MemorySettings,
    OptimSettings,
    SimilaritySettings,
    with_defaults,
)
from siso.io import write_json


@dataclass
class SisoConfig:
    """Everything that determines a SISO optimization run.

    Attributes:
        model: Backbone name (``sdxl-turbo``, ``sd-turbo``), Hub id or local diffusers directory.
        train_prompt: The prompt optimized with (paper Sec. 3.3: keep it simple, "a photo of a dog").
        resolution: Image side in pixels; ``None`` means the backbone's default (512 for both turbo models).
        dtype: Weights dtype of the frozen models: fp32, bf16, fp16, or auto (bf16 on CUDA, fp32 elsewhere: CPUs
            without native bf16 run it ~250x slower). LoRA weights and Adam state stay fp32.
        device: Torch device string; ``None`` picks cuda, then mps, then cpu.
        memory: Text-encoder offload, gradient checkpointing and quantization (`MemorySettings`).
        fast: The opt-in fast loss (`FastSettings`): a different loss, recorded as such.
        accel: How an iteration runs (`AccelSettings`: layout, lean graph, fused upsampling, ``torch.compile``):
            speed and memory only, images equal up to float rounding.
        compose: The loss terms of several subjects, or of one in a box (`ComposeSettings`); unused for one subject
            anywhere in the image.
        negatives: Negative targets added to the loss (`NegativeSettings`); none by default.
        ip_adapter: A frozen IP-Adapter to start from (`IPAdapterSettings`); none by default.
    """

    model: str = "sdxl-turbo"
    train_prompt: str = "a photo of a subject"
    resolution: int | None = setting(
        None, flag="--resolution", metavar="PX", help="image side (backbone default: 512)", minimum=8
    )
    dtype: str = setting(
        "auto",
        flag="--dtype",
        choices=DTYPES,
        help="weights dtype (auto: bf16 on CUDA, fp32 elsewhere)",
        filled=True,
    )
    device: str | None = setting(None, flag="--device", help="torch device (default: cuda, else mps, else cpu)")
    lora: LoraSettings = field(default_factory=LoraSettings)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    fast: FastSettings = field(default_factory=FastSettings)
    accel: AccelSettings = field(default_factory=AccelSettings)
    compose: ComposeSettings = field(default_factory=ComposeSettings)
    negatives: NegativeSettings = field(default_factory=NegativeSettings)
    ip_adapter: IPAdapterSettings = field(default_factory=IPAdapterSettings)

    def __post_init__(self):
        self.similarity = self.fast.similarity_for(self.similarity)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.train_prompt.strip():
            raise ValueError("train_prompt must not be empty")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def merged(cls, model: str, defaults: dict[str, dict], **overrides) -> Self:
        """The configuration of ``model`` with its backbone family's ``defaults``, then the caller's values
        (`siso.backbones.config_for` looks the family's defaults up).

        Args:
            model: Backbone name, Hub id or local diffusers directory.
            defaults: The family's settings where they differ from this module's, per settings group
                (`siso.backbones.Backbone.defaults`: FLUX.1-schnell learns at lr 2e-4, Sana at 8e-4 with 20 steps,
                ...); ``{}`` for none.
            **overrides: Top-level fields (``train_prompt="a photo of a dog"``), or per settings group either a dict
                of the fields to set over the family's (``optim={"lr": 1e-4}``) or a settings object, taken whole. A
                ``None`` value means "not given" (a flag left out), so the default stays.

        Raises:
            TypeError: an unknown field or group.
            ValueError: a value the settings refuse.
        """
        types = typing.get_type_hints(cls)
        groups = {name for name, kind in types.items() if dataclasses.is_dataclass(kind)}
        unknown = sorted(set(overrides) - set(types))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        defaults = cls._family_defaults(defaults)
        values: dict = {"model": model}
        for name, value in overrides.items():
            if name not in groups and value is not None:
                values[name] = value
        for group in groups:
            given = overrides.get(group)
            if dataclasses.is_dataclass(given):
                values[group] = given
            elif given or group in defaults:
                values[group] = with_defaults(types[group], defaults.get(group, {}), **(given or {}))
        return cls(**values)

    @classmethod
    def _family_defaults(cls, defaults: dict[str, dict]) -> dict[str, dict]:
        """The family defaults this kind of run takes (all of them, for generation)."""
        return defaults

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        """Rebuild a config from `to_dict`'s output (nested settings become their dataclasses again); a config.json
        written before the acceleration settings (a top-level ``compile``) reads too."""
        types = typing.get_type_hints(cls)
        data = dict(data)
        if "compile" in data:
            data["accel"] = {**data.get("accel", {}), "compile": data.pop("compile")}
        return cls(
            **{
                name: types[name](**value) if dataclasses.is_dataclass(types[name]) else value
                for name, value in data.items()
            }
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()))
