"""Several photos of a subject and negative targets (SFO), the math `SimilarityLoss` and `CompositionLoss` share.

With the subject's photos ``r_1..r_P``, each network's similarity is the cosine averaged over them (the reference
code's mean over keys): ``s_n(x, r) = mean_p cos(f_n(x), f_n(r_p))``. The negative terms are `NegativeSettings`':

    ``blur``:    ``blur_weight * sum_n w_n * -log sigmoid(beta * (s_n(x, r) - s_n(x, blur(r))))``
    ``generic``: ``generic_weight * sum_n w_n * -log softmax_0([s_n(x, r), cos_n(x, g_1), ..., cos_n(x, g_N)] / tau)``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from siso.config import NegativeSettings
from siso.images import pil_to_tensor

# One photo of a subject, or several.
Photos = Image.Image | Sequence[Image.Image]


def as_photos(photos: Photos) -> list[Image.Image]:
    """One photo or several -> a list of them.

    Raises:
        ValueError: no photo.
    """
    photos = [photos] if isinstance(photos, Image.Image) else list(photos)
    if not photos:
        raise ValueError("a subject needs at least one photo")
    return photos


def embed_photos(net: torch.nn.Module, photos: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    """(P, D) unit embeddings of ``photos`` under ``net``, one photo at a time: photos differ in size, and one photo
    is then embedded exactly as the one-photo loss embeds it."""
    return torch.cat([F.normalize(net(pil_to_tensor(photo).to(device)), dim=-1) for photo in photos])


def cosines(embeds: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(B, D) and (P, D) unit embeddings -> (B, P) cosines, taken as a product and a sum: a matrix product sums in
    another order, and the mean over one photo must be the one-photo cosine bit for bit."""
    return (embeds[:, None, :] * references[None]).sum(-1)


@dataclass
class NegativeTargets:
    """One subject's negative targets: unit embeddings per network of its blurred photos (P, D) and of the generic
    images (N, D); a kind that `settings` leaves off has no entries.

    Attributes:
        settings: Which negatives, and their weights.
        blurred: Network name -> (P, D) embeddings of ``blur(r_p)``.
        generic: Network name -> (N, D) embeddings of ``g_1..g_N``.
    """

    settings: NegativeSettings
    blurred: dict[str, torch.Tensor]
    generic: dict[str, torch.Tensor]

    @classmethod
    def embed(
        cls,
        nets: Mapping[str, torch.nn.Module],
        photos: Sequence[Image.Image],
        generic: Sequence[Image.Image],
        settings: NegativeSettings,
        device: torch.device,
    ) -> NegativeTargets:
        """Embed the blurred ``photos`` (Gaussian, ``settings.blur_radius`` px) and the ``generic`` images, one at a
        time, under each network (call without gradient: they are fixed targets).

        Raises:
            ValueError: the generic negative is on but no generic image is given.
        """
        if settings.generic and not generic:
            raise ValueError(
                "the generic negative needs generic images ('a photo of a {class}' drawn by the frozen model); "
                "none were given"
            )
        blurred, generics = {}, {}
        if settings.blur:
            photos = [photo.filter(ImageFilter.GaussianBlur(settings.blur_radius)) for photo in photos]
            blurred = {name: embed_photos(net, photos, device) for name, net in nets.items()}
        if settings.generic:
            generics = {name: embed_photos(net, generic, device) for name, net in nets.items()}
        return cls(settings, blurred, generics)

    def terms(
        self, embeds: dict[str, torch.Tensor], similarity: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> dict[str, torch.Tensor]:
        """The negative terms, each summed over the networks with their weights ``w_n`` (before ``blur_weight`` and
        ``generic_weight``: see `negative_loss`).

        Args:
            embeds: Network name -> (B, D) unit embeddings of the generated images.
            similarity: Network name -> (B,) ``s_n(x, r)``, the mean cosine with the subject's photos.
            weights: Network name -> ``w_n``.

        Returns:
            ``negative/blur``: (B,) ``sum_n w_n * -log sigmoid(beta * (s_n(x, r) - s_n(x, blur(r))))``;
            ``negative/generic``: (B,) ``sum_n w_n * -log softmax_0([s_n(x, r), cos_n(x, g_i)...] / tau)``;
            each only when on.
        """
        settings, terms = self.settings, {}
        if self.blurred:
            terms["negative/blur"] = sum(
                weights[name]
                * -F.logsigmoid(settings.beta * (similarity[name] - cosines(embeds[name], blurred).mean(-1)))
                for name, blurred in self.blurred.items()
            )
        if self.generic:
            logits = {  # (B, 1 + N): the subject first, then the generic images
                name: torch.cat([similarity[name][:, None], cosines(embeds[name], generic)], -1) / settings.temperature
                for name, generic in self.generic.items()
            }
            terms["negative/generic"] = sum(
                weights[name] * -F.log_softmax(logit, dim=-1)[:, 0] for name, logit in logits.items()
            )
        return terms


def negative_loss(terms: dict[str, torch.Tensor], settings: NegativeSettings) -> torch.Tensor:
    """(B,) ``blur_weight * negative/blur + generic_weight * negative/generic`` of `NegativeTargets.terms`' terms (or
    of their mean over subjects)."""
    weights = {"negative/blur": settings.blur_weight, "negative/generic": settings.generic_weight}
    return sum(weights[name] * term for name, term in terms.items())
