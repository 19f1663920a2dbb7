"""The settings of a refine run (`RefineConfig`): an edit of any image that already shows the subject, in which only
the subject's identity is meant to change."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from siso.config.editing import EditConfig, EditSettings
from siso.config.fields import setting

REFINE_SECTION = "refine (not in the SISO paper; not measured on real weights here)"
# Where the image to refine comes from: a file (``--image``), or drawn by the frozen IP-Adapter from the subject's
# photos and the prompt (SDXL family).
STARTS = ("image", "ip-adapter")
# Share of the schedule a refine redoes. Few-step models fix the layout in their first, noisiest step (SDEdit's
# realism-faithfulness trade-off, Meng et al. 2022): editing redoes 3 of 4 steps (t = 749, 499, 249) to draw a new
# object; a refine redoes 2 (t = 499, 249), so the input's pose and composition stay in the inverted latent while
# identity (shape details, colours, texture) can still change.
REFINE_STRENGTH = 0.5
# The default check network: a CLIP the loss does not use (the IR stand-in is LAION's ViT-H/14), so a gain that
# shows under it too is not the optimizer fooling its own networks.
CHECK_MODEL = "openai/clip-vit-base-patch32"


@dataclass
class RefineSettings:
    """What a refine adds to an edit: the structure term, the start, and the check network.

    ``L = L_identity + c_bg * L_bg + c_struct * L_struct``, where ``L_identity`` is the composed run's per-subject
    term on the crop of each subject's region (``--dino-weight``, ``--ir-weight``), ``L_bg`` editing's MSE outside
    the regions against the input (``--bg-weight``), and ``L_struct`` the structure term of
    `siso.losses.structure.StructureLoss` inside each region.

    Attributes:
        structure_weight: c_struct; 0 turns the structure term off.
        start: ``image`` (refine the given ``--image``) or ``ip-adapter`` (draw it first with the frozen
            IP-Adapter from the subject's photos and the prompt, SDXL family).
        check_model: Hub id or folder of a CLIP checkpoint the loss does not use, whose image similarity
            metrics.json reports before and after beside the loss's own networks.
    """

    structure_weight: float = setting(
        10.0,
        flag="--structure-weight",
        metavar="C",
        help="weight of the structure term: DINOv2 patch self-similarity inside the region kept as the input's "
        "({structure_weight:g}; 0: off)",
        section=REFINE_SECTION,
        label="Structure weight",
        minimum=0,
    )
    start: str = setting(
        "image",
        flag="--start",
        choices=STARTS,
        help="image: refine --image (default); ip-adapter: draw it first with the frozen IP-Adapter from the "
        "subject's photos and --prompt (SDXL family; --ip-adapter picks the adapter)",
        section=REFINE_SECTION,
        filled=True,
    )
    check_model: str = setting(
        CHECK_MODEL,
        flag="--check-model",
        metavar="ID|DIR",
        help="a CLIP the loss does not use, whose similarity metrics.json gives before and after ({check_model})",
        section=REFINE_SECTION,
        filled=True,
    )

    def __post_init__(self):
        if not (math.isfinite(self.structure_weight) and self.structure_weight >= 0):
            raise ValueError(f"structure_weight must be a finite number >= 0, got {self.structure_weight}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if not self.check_model.strip():
            raise ValueError("the check model must not be empty")


@dataclass
class RefineConfig(EditConfig):
    """A refine run: an `EditConfig` whose strength defaults to `REFINE_STRENGTH`, plus `RefineSettings`.

    The IP-Adapter settings (``ip_adapter``) are those of ``refine.start == "ip-adapter"``: the adapter draws the
    image to refine and is taken off before any LoRA.
    """

    edit: EditSettings = field(default_factory=lambda: EditSettings(strength=REFINE_STRENGTH))
    refine: RefineSettings = field(default_factory=RefineSettings)

    @classmethod
    def _family_defaults(cls, defaults: dict[str, dict]) -> dict[str, dict]:
        """Editing's, with the refine's strength unless the family sets its own."""
        defaults = super()._family_defaults(defaults)
        return {**defaults, "edit": {"strength": REFINE_STRENGTH, **defaults.get("edit", {})}}

    def __post_init__(self):
        starts_from_adapter = self.refine.start == "ip-adapter"
        if starts_from_adapter != self.ip_adapter.enabled:
            raise ValueError(
                "an IP-Adapter start takes the adapter's model (ip_adapter.model, e.g. h94/IP-Adapter)"
                if starts_from_adapter
                else "a refine uses an IP-Adapter only to draw its start: set refine.start to ip-adapter"
            )
        super().__post_init__()
