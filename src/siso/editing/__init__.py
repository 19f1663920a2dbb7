"""Editing (subject swap in a given photo, paper Sec. 3.4): the photo at model resolution (`siso.editing.scene`), its
inversion (`siso.editing.inversion`: ReNoise, or DDIM) and the edit loop (`siso.editing.edit`)."""

from siso.editing.edit import (
    BackgroundLoss,
    EditObjective,
    EditResult,
    InvertedScene,
    edit_subject,
    invert_scene,
    psnr,
)
from siso.editing.inversion import Inversion, invert
from siso.editing.scene import Scene, composite, prepare_scene

__all__ = [
    "BackgroundLoss",
    "EditObjective",
    "EditResult",
    "Inversion",
    "InvertedScene",
    "Scene",
    "composite",
    "edit_subject",
    "invert",
    "invert_scene",
    "prepare_scene",
    "psnr",
]
