"""The settings of a SISO editing run: inversion of the photo, the edit itself, and `EditConfig`, which adds them to a
`SisoConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from siso.config.fields import setting
from siso.config.run import SisoConfig
from siso.config.settings import OptimSettings

INVERSION_METHODS = ("renoise", "ddim")
BACKGROUND_TARGETS = ("input", "reconstruction")


@dataclass
class InversionSettings:
    """ReNoise inversion (Garibi et al. 2024) of the photo to edit, as the SISO reference code runs it.

    Each inversion step, from low to high noise, solves ``step(predict(z), z) = z_prev`` for the noisier latent
    ``z`` by fixed-point iteration ("renoising"): evaluate the denoiser at the current estimate, invert the step,
    repeat. Plain DDIM-style inversion is the special case with no renoising and no regularisation
    (``InversionSettings.preset("ddim")``).

    Attributes:
        method: ``renoise`` or ``ddim``; a label recorded with the run (`preset` sets the fields it implies).
        renoise_steps: Renoising iterations per step (reference: 9).
        first_step_renoise_steps: Renoising iterations of the first (least noisy) steps, those with timestep below
            ``first_step_max_timestep`` (reference: 5 and 250).
        first_step_max_timestep: See ``first_step_renoise_steps``.
        average: Iterations ``[a, b)`` whose predictions are averaged into the final estimate (reference: 8-9).
        first_step_average: The same for the first steps (reference: iterations 0-4).
        kl_weight: Weight of the patch-KL noise regularisation (reference: 0.065); 0 turns it off.
        ac_weight: Weight of the auto-correlation noise regularisation (reference: 20); 0 turns it off.
        regularization_rounds: Rounds of regularisation per prediction (reference: 4).
        ac_rolls: Random shifts averaged per auto-correlation round (reference: 5).
        noise_correction: For ancestral samplers: after each step, set that step's stored noise so that denoising
            the inverted latent lands exactly on the previous one. The reference code moves the noise only part of
            the way (ten normalised gradient steps of 1.8); siso sets it exactly.
    """

    method: str = setting(
        "renoise",
        flag="--inversion",
        choices=INVERSION_METHODS,
        help="renoise (default) or plain ddim inversion",
        filled=True,
    )
    renoise_steps: int = 9
    first_step_renoise_steps: int = 5
    first_step_max_timestep: int = 250
    average: tuple[int, int] = (8, 10)
    first_step_average: tuple[int, int] = (0, 5)
    kl_weight: float = 0.065
    ac_weight: float = 20.0
    regularization_rounds: int = 4
    ac_rolls: int = 5
    noise_correction: bool = True

    def __post_init__(self):
        self.average, self.first_step_average = tuple(self.average), tuple(self.first_step_average)  # JSON: lists
        if self.method not in INVERSION_METHODS:
            raise ValueError(f"inversion method must be one of {', '.join(INVERSION_METHODS)}, got {self.method!r}")
        for name in ("renoise_steps", "first_step_renoise_steps", "regularization_rounds", "ac_rolls"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("kl_weight", "ac_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("average", "first_step_average"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a range [a, b) with 0 <= a <= b, got {getattr(self, name)}")

    @classmethod
    def preset(cls, method: str) -> InversionSettings:
        """The reference code's ReNoise settings, or plain DDIM-style inversion (no renoising, no regularisation)."""
        if method == "ddim":
            return cls(method="ddim", renoise_steps=0, first_step_renoise_steps=0, kl_weight=0.0, ac_weight=0.0)
        return cls(method=method)


@dataclass
class EditSettings:
    """Subject swap in a given photo (paper Sec. 3.4 and Appendix A).

    Attributes:
        strength: Fraction of the ``num_inference_steps`` schedule that is inverted and denoised again (paper: 0.75:
            with 4 steps, t = 749 -> 499 -> 249 -> 0).
        bg_weight: c in ``L = L_sim + c * L_bg`` (paper: 10).
        bg_target: What ``L_bg`` (MSE outside the mask) compares with: ``input`` (the input photo's pixels, the
            reference code) or ``reconstruction`` (the inversion's reconstruction, the paper's Eq. 3).
        mask_dilation: Pixels (of the model-resolution image) by which the object mask is grown, so the new subject
            may be a little larger than the old one; the reference code uses none.
        composite: Paste the input's pixels back outside the (feathered) mask in the final image (beyond the paper).
        feather: Pixels over which the composite blends, inside the mask.
    """

    strength: float = setting(
        0.75,
        flag="--strength",
        metavar="S",
        help="share of the steps redone, in (0, 1] ({strength})",
        filled=True,
        label="Strength",
        minimum=0.05,
        maximum=1,
    )
    bg_weight: float = setting(
        10.0, flag="--bg-weight", metavar="C", help="background loss weight ({bg_weight:g})", filled=True
    )
    bg_target: str = setting(
        "input",
        flag="--bg-target",
        choices=BACKGROUND_TARGETS,
        help="background compared with the input photo (default, reference code) or the inversion's "
        "reconstruction (paper Eq. 3)",
        filled=True,
    )
    mask_dilation: int = setting(
        8,
        flag="--mask-dilation",
        metavar="PX",
        help="grow the mask by PX pixels at model resolution ({mask_dilation})",
        filled=True,
    )
    composite: bool = setting(
        False,
        flag="--composite",
        help="paste the input back outside the (feathered) mask in best.png",
        label="Composite",
    )
    feather: int = setting(
        4,
        flag="--feather",
        metavar="PX",
        help="--composite blends over PX pixels inside the mask ({feather})",
        filled=True,
    )

    def __post_init__(self):
        if not (math.isfinite(self.strength) and 0 < self.strength <= 1):
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not (math.isfinite(self.bg_weight) and self.bg_weight >= 0):
            raise ValueError(f"bg_weight must be a finite number >= 0, got {self.bg_weight}")
        if self.bg_target not in BACKGROUND_TARGETS:
            raise ValueError(f"bg_target must be one of {', '.join(BACKGROUND_TARGETS)}, got {self.bg_target!r}")
        if self.mask_dilation < 0 or self.feather < 0:
            raise ValueError(
                f"mask_dilation and feather are pixel counts >= 0, got {self.mask_dilation} and {self.feather}"
            )


@dataclass
class EditConfig(SisoConfig):
    """A SISO editing run: a `SisoConfig` (optimized with the edit prompt) plus the inversion and edit settings.

    ``optim.num_inference_steps`` is the length of the schedule that ``edit.strength`` cuts (4 by default, as the
    reference code's SDXL-Turbo editing); ``optim.grad_steps`` of the ``int(steps * strength)`` denoising steps keep
    their graph.
    """

    optim: OptimSettings = field(default_factory=lambda: OptimSettings(num_inference_steps=4))
    edit: EditSettings = field(default_factory=EditSettings)
    inversion: InversionSettings = field(default_factory=InversionSettings)

    @classmethod
    def _family_defaults(cls, defaults: dict[str, dict]) -> dict[str, dict]:
        """The family's defaults, but editing's own schedule (``optim.num_inference_steps``: 4 steps that
        ``edit.strength`` cuts) instead of the family's generation steps, then what the family declares for editing
        under ``"editing"`` (`siso.backbones.Backbone.defaults`: Sana edits with its 20 steps), group by group."""
        steps = cls.__dataclass_fields__["optim"].default_factory().num_inference_steps
        merged = {**defaults, "optim": {**defaults.get("optim", {}), "num_inference_steps": steps}}
        for group, values in merged.pop("editing", {}).items():
            merged[group] = {**merged.get(group, {}), **values}
        return merged

    def __post_init__(self):
        super().__post_init__()
        if self.fast.enabled:
            raise ValueError(
                "the fast loss is for generation only: editing's background loss compares pixels, which "
                "the tiny decoder would change"
            )
        steps = int(self.optim.num_inference_steps * self.edit.strength)
        if steps < 1:
            raise ValueError(
                f"strength {self.edit.strength} of {self.optim.num_inference_steps} steps leaves no denoising step"
            )
        if self.optim.grad_steps > steps:
            raise ValueError(f"grad_steps ({self.optim.grad_steps}) must be at most the {steps} denoising steps")
