"""How an optimization iteration runs (`AccelSettings`): levers of speed and memory that never change what it
computes, and their named presets (`ACCEL_PRESETS`), which `siso bench` measures against each other."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from siso.config.fields import setting


@dataclass(frozen=True)
class AccelSettings:
    """The levers `siso.accel.accelerated` applies while optimizing; the final images run through stock modules.

    Each gives the same images up to float rounding (the lean graph: bit-identical).

    Attributes:
        channels_last_vae: Run the VAE in channels-last layout (faster convolutions; `Backbone.channels_last_vae`).
        lean_graph: Frozen convolutions keep no input for backward, GroupNorm -> SiLU pairs one tensor instead of
            two, GEGLU and the VAE's residuals keep less (`siso.accel.lean`: a VAE graph 2.5x smaller).
        fuse_upsampling: Nearest 2x upsampling then a 3x3 convolution as one transposed convolution in the VAE and
            the denoiser (`siso.accel.upsample`: 0.44x the work of those layers).
        compile: ``torch.compile`` the denoiser, the VAE decoder and the similarity networks (`siso.accel.compile`;
            ``--compile``): the first iteration takes the compile time. The compiler then decides what the backward
            keeps, so the lean graph is not applied.
    """

    channels_last_vae: bool = True
    lean_graph: bool = True
    fuse_upsampling: bool = True
    compile: bool = setting(
        False,
        flag="--compile",
        help="torch.compile the denoiser, VAE decoder and similarity networks while optimizing: the first iteration "
        "takes the compile time (minutes); on a CPU it needs a C++ compiler",
    )

    @classmethod
    def preset(cls, name: str, **overrides) -> AccelSettings:
        """A named preset (`ACCEL_PRESETS`) with ``overrides`` applied.

        Raises:
            ValueError: an unknown preset name.
        """
        if name not in ACCEL_PRESETS:
            raise ValueError(f"unknown acceleration preset {name!r}; known: {', '.join(ACCEL_PRESETS)}")
        return dataclasses.replace(ACCEL_PRESETS[name], **overrides)


ACCEL_PRESETS: dict[str, AccelSettings] = {
    # What the SISO reference code does: stock modules, stock layout.
    "reference": AccelSettings(channels_last_vae=False, lean_graph=False, fuse_upsampling=False),
    # siso's default.
    "default": AccelSettings(),
    # The fast configuration runs as the default does: what makes it fast is its loss (`FastSettings`), not a lever.
    "fast": AccelSettings(),
}
