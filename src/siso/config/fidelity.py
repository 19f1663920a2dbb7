"""Settings of the identity levers beyond the SISO paper: negative targets (`NegativeSettings`) and a zero-shot start
from an IP-Adapter (`IPAdapterSettings`). Both are off by default; neither has been measured on real weights here."""

from __future__ import annotations

import math
from dataclasses import dataclass

from siso.config.fields import setting

# The negative targets `NegativeSettings.kinds` may name.
NEGATIVE_KINDS = ("blur", "generic")
# Where --help lists the `IPAdapterSettings` flags.
IP_ADAPTER_SECTION = "zero-shot start (not in the SISO paper; not measured on real weights here)"


@dataclass
class NegativeSettings:
    """Negative targets (SFO's, arXiv 2025 "seed 003": DreamBench DINO 0.652 -> 0.767 with both), used here at test
    time: the generated image should be more like the subject photo than like what is generic about it.

    Per similarity network ``n`` (weights ``w_n``: a and b of Eq. 2) and image ``x`` with the subject's photos ``r``:

        ``blur``:    ``blur_weight * sum_n w_n * -log sigmoid(beta * (s_n(x, r) - s_n(x, blur(r))))``
        ``generic``: ``generic_weight * sum_n w_n * -log softmax_0([s_n(x, r), s_n(x, g_1), ..., s_n(x, g_N)] / tau)``

    where ``s_n`` is the cosine averaged over the subject's photos, ``blur(r)`` each photo under a Gaussian blur of
    ``blur_radius`` px, and ``g_1..g_N`` are ``generic_images`` images of "a photo of a {class}" drawn once by the
    frozen model (InfoNCE with temperature ``tau``).

    Attributes:
        kinds: Which negatives to use (`NEGATIVE_KINDS`); empty: none (the paper's loss).
        blur_radius: Gaussian blur radius in pixels of the photo (SFO: 5).
        beta: Sharpness of the blur term's sigmoid (10).
        blur_weight: Weight of the blur term (0.2).
        generic_weight: Weight of the generic term (0.2).
        generic_images: How many generic images the frozen model draws (SFO: 4).
        temperature: InfoNCE temperature tau of the generic term (0.07).
    """

    kinds: tuple[str, ...] = setting(
        (),
        flag="--negative",
        choices=NEGATIVE_KINDS,
        help="add a negative target; repeat for both: blur (the photo blurred, radius {blur_radius:g} px, weight "
        "{blur_weight}) or generic ({generic_images} images of 'a photo of a CLASS' drawn once by the frozen model, "
        "InfoNCE at tau {temperature}, weight {generic_weight}; needs the subject's class: --subject-class, else "
        "detected)",
        section="negatives (SFO; not measured on real weights here)",
    )
    blur_radius: float = 5.0
    beta: float = 10.0
    blur_weight: float = 0.2
    generic_weight: float = 0.2
    generic_images: int = 4
    temperature: float = 0.07

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        unknown = [kind for kind in self.kinds if kind not in NEGATIVE_KINDS]
        if unknown:
            raise ValueError(f"unknown negative {unknown[0]!r}; choose from {', '.join(NEGATIVE_KINDS)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"a negative is named twice: {', '.join(self.kinds)}")
        for name in ("blur_radius", "beta", "blur_weight", "generic_weight", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if self.generic_images < 1:
            raise ValueError(f"generic_images must be >= 1, got {self.generic_images}")

    @property
    def blur(self) -> bool:
        return "blur" in self.kinds

    @property
    def generic(self) -> bool:
        return "generic" in self.kinds


@dataclass
class IPAdapterSettings:
    """A frozen IP-Adapter (Ye et al. 2023) under the LoRA: its image of the subject conditions every denoising step,
    so iteration 0 is a zero-shot subject-driven image instead of the bare model's. Not in the SISO paper.

    Attributes:
        model: Hub id or local folder of the adapter weights (``h94/IP-Adapter``); ``None``: no adapter.
        weight_name: The weight file inside ``model``, with its subfolder (``sdxl_models/ip-adapter_sdxl.safetensors``);
            ``None``: the backbone family's default.
        scale: The adapter's scale (diffusers' ``set_ip_adapter_scale``; 0.5).
    """

    model: str | None = setting(
        None,
        flag="--ip-adapter",
        metavar="ID|DIR[:WEIGHT_FILE]",
        help="start from a frozen IP-Adapter that sees the subject photo(s), the LoRA learned over it: e.g. "
        "h94/IP-Adapter (SDXL family; default weight file sdxl_models/ip-adapter_sdxl.safetensors); a saved "
        "subject (--lora) brings its own",
        section=IP_ADAPTER_SECTION,
    )
    weight_name: str | None = None  # given with --ip-adapter (`parse`)
    scale: float = setting(
        0.5,
        flag="--ip-adapter-scale",
        metavar="S",
        help="with --ip-adapter: its scale ({scale})",
        section=IP_ADAPTER_SECTION,
        minimum=0,
    )

    def __post_init__(self):
        if self.model is not None and not self.model.strip():
            raise ValueError("the IP-Adapter model must not be empty")
        if self.weight_name is not None and not self.weight_name.strip():
            raise ValueError("the IP-Adapter weight file must not be empty")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"the IP-Adapter scale must be a finite number >= 0, got {self.scale}")

    @classmethod
    def parse(cls, spec: str, scale: float = 0.5) -> IPAdapterSettings:
        """``ID|DIR[:WEIGHT_FILE]`` (the ``--ip-adapter`` flag) -> settings.

        Raises:
            ValueError: an empty part.
        """
        model, _, weight_name = spec.partition(":")
        if not model.strip() or (":" in spec and not weight_name.strip()):
            raise ValueError(f"--ip-adapter takes ID|DIR[:WEIGHT_FILE], got {spec!r}")
        return cls(model, weight_name or None, scale)

    @property
    def enabled(self) -> bool:
        return self.model is not None
