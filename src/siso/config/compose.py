"""The loss of several subjects in one image, or of one subject in a box (`ComposeSettings`): not in the SISO paper,
which learns one subject anywhere in the image."""

from __future__ import annotations

import math
from dataclasses import dataclass

from siso.config.fields import setting

# The most subjects one image composes (`ComposeSettings`): each adds a crop per similarity network to every iteration.
MAX_SUBJECTS = 4
COMPOSE_SECTION = "several subjects, or one in a box"  # where --help lists the `ComposeSettings` flags


@dataclass
class ComposeSettings:
    """The loss of several subjects in one image, or of one subject in a box (`siso.losses.CompositionLoss`). Not in
    the SISO paper, which learns one subject anywhere in the image; the defaults are this project's, unmeasured.

    Per subject k, on the crop of its box: ``id_k = a * (1 - cos DINO) + b * (1 - cos IR)`` against its photo (Eq. 2
    on the crop). The loss is

        ``mean_k id_k + worst_weight * (max_k id_k - mean_k id_k)``
        ``+ leak_weight * mean_{k != j} sum_n w_n relu(cos_n(crop_k, r_j) - cos_n(r_k, r_j) - leak_margin)``
        ``+ presence_weight * mean_k [(1 - topk_in(h_k)) + relu(topk_out(h_k))]``

    where ``n`` runs over the similarity networks (weights ``w_n``: a and b), ``r_k`` is subject k's photo, and
    ``h_k`` the cosine of each DINOv2 patch token of the whole image with subject k's DINOv2 embedding (a
    subject-likeness map); ``topk_in`` and ``topk_out`` average its ``presence_top_k`` share of highest values inside
    and outside the box (the inner- and outer-box constraints of BoxDiff, Xie et al. 2023, on that map instead of
    cross-attention). The presence term counts only subjects whose box leaves part of the image outside it: one
    subject with a box over the whole image has exactly the single-subject loss.

    Attributes:
        worst_weight: Weight of the worst subject's excess over the mean, in [0, 1] (1: the loss follows the worst
            subject alone), so that one subject cannot win at the other's cost.
        leak_weight: Weight of the leakage term (a box looking like another subject).
        leak_margin: Tolerance m of the leakage term: a box may look up to m more like subject j than subject k's
            photo does before it is penalised (so a box that is exactly its own subject costs nothing).
        presence_weight: Weight of the presence-and-absence term of boxed subjects; 0 turns it off.
        presence_top_k: Share (0, 1] of the map's cells inside (and outside) a box that the term averages.
    """

    worst_weight: float = setting(
        0.5,
        flag="--worst-weight",
        metavar="W",
        help="weight of the worst subject's excess over the mean identity term, 0..1 ({worst_weight})",
        section=COMPOSE_SECTION,
        minimum=0,
        maximum=1,
    )
    leak_weight: float = setting(
        0.5,
        flag="--leak-weight",
        metavar="W",
        help="weight of the leakage term: a box looking like another subject ({leak_weight})",
        section=COMPOSE_SECTION,
        minimum=0,
    )
    leak_margin: float = setting(
        0.05,
        flag="--leak-margin",
        metavar="M",
        help="leakage tolerance: how much more alike than the two photos a box may look ({leak_margin})",
        section=COMPOSE_SECTION,
        minimum=0,
    )
    presence_weight: float = setting(
        0.5,
        flag="--presence-weight",
        metavar="W",
        help="weight of the presence term: the subject likely inside its box, unlikely outside "
        "({presence_weight}; 0: off)",
        section=COMPOSE_SECTION,
        minimum=0,
    )
    presence_top_k: float = setting(
        0.2,
        flag="--presence-top-k",
        metavar="SHARE",
        help="share of the cells inside and outside a box the presence term averages ({presence_top_k})",
        section=COMPOSE_SECTION,
        minimum=0,
        maximum=1,
    )

    def __post_init__(self):
        for name in ("worst_weight", "leak_weight", "leak_margin", "presence_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.worst_weight > 1:
            raise ValueError(f"worst_weight is a share in [0, 1], got {self.worst_weight}")
        if not 0 < self.presence_top_k <= 1:  # also false for nan
            raise ValueError(f"presence_top_k is a share in (0, 1], got {self.presence_top_k}")
