"""The similarity loss of SISO (paper Eq. 2): ``a * (1 - cos DINO) + b * (1 - cos IR)``.

The networks are a plain registry (`SIMILARITY_NETS`) of loaders with one signature,
``(model, resolution, device, dtype) -> network``; each network maps images (B, 3, H, W) in [0, 1] to embeddings
(B, D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from siso.config import NegativeSettings, SimilaritySettings
from siso.losses.embeddings import ClipImageEmbedding, DinoEmbedding, Embedding
from siso.losses.guie import GuieEmbedding, is_guie_checkpoint
from siso.losses.negatives import NegativeTargets, Photos, as_photos, cosines, embed_photos, negative_loss


def load_ir(
    model: str, resolution: int | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Embedding:
    """The IR network of Eq. 2: the paper's GUIE model from its checkpoint file (`GuieEmbedding`), or for a Hub id or
    folder the CLIP image embedding that stands in for it (`ClipImageEmbedding`).

    Raises:
        siso.hub.ModelLoadError: it cannot be loaded.
    """
    loader = GuieEmbedding.from_pretrained if is_guie_checkpoint(model) else ClipImageEmbedding.from_pretrained
    return loader(model, resolution, device, dtype)


SimilarityNetLoader = Callable[[str, int | None, str | torch.device, torch.dtype], Embedding]
SIMILARITY_NETS: dict[str, SimilarityNetLoader] = {"dino": DinoEmbedding.from_pretrained, "ir": load_ir}


def load_nets(
    settings: SimilaritySettings, device: str | torch.device, dtype: torch.dtype
) -> tuple[dict[str, Embedding], dict[str, float]]:
    """The networks of ``settings`` with a non-zero weight, loaded onto ``device`` in ``dtype``, and their weights.

    Raises:
        siso.hub.ModelLoadError: a network cannot be loaded.
    """
    specs = {
        "dino": (settings.dino_model, settings.dino_resolution, settings.dino_weight),
        "ir": (settings.ir_model, settings.ir_resolution, settings.ir_weight),
    }
    weights = {name: weight for name, (_, _, weight) in specs.items() if weight > 0}
    nets = {
        name: SIMILARITY_NETS[name](model, resolution, device, dtype)
        for name, (model, resolution, _) in specs.items()
        if name in weights
    }
    return nets, weights


class SimilarityLoss(torch.nn.Module):
    """``sum_n w_n * (1 - s_n(x, r))`` over the similarity networks, with ``s_n(x, r) = mean_p cos(f_n(x), f_n(r_p))``
    the cosine averaged over the subject's photos (the reference code's mean over keys); plus, when
    ``negatives.kinds`` names them, the negative terms of `NegativeSettings` (`siso.losses.negatives`).

    The subject's embeddings are computed once, without gradient (`set_subject`); the networks can serve the next
    subject's loss (`siso.losses.networks.LossNetworks`).

    Args:
        nets: Name -> embedding network (loaded by `SIMILARITY_NETS`, or any module images -> (B, D)).
        subject: The subject photo, or several photos of it.
        weights: Name -> weight ``w_n``; ``None``: 1 each.
        negatives: The negative targets; ``None``: none (the paper's loss).
        generic: Generic images of the subject's class, for the ``generic`` negative.

    Raises:
        ValueError: no photo, or the ``generic`` negative without generic images.
    """

    def __init__(
        self,
        nets: dict[str, torch.nn.Module],
        subject: Photos,
        weights: dict[str, float] | None = None,
        negatives: NegativeSettings | None = None,
        generic: Sequence[Image.Image] = (),
    ):
        super().__init__()
        self.weights = weights or dict.fromkeys(nets, 1.0)
        self.nets = torch.nn.ModuleDict(nets)
        self.negatives = negatives or NegativeSettings()
        self.set_subject(subject, generic)

    @classmethod
    def from_pretrained(
        cls,
        settings: SimilaritySettings,
        subject: Photos,
        device: str | torch.device,
        dtype: torch.dtype,
        negatives: NegativeSettings | None = None,
        generic: Sequence[Image.Image] = (),
    ) -> SimilarityLoss:
        """Load the networks of ``settings`` with a non-zero weight onto ``device`` in ``dtype``.

        Raises:
            siso.hub.ModelLoadError: a network cannot be loaded.
            ValueError: as the constructor.
        """
        nets, weights = load_nets(settings, device, dtype)
        return cls(nets, subject, weights, negatives, generic)

    @torch.no_grad()
    def set_subject(self, subject: Photos, generic: Sequence[Image.Image] = ()) -> None:
        """Compute the subject's reference embeddings, (P, D) per network, one photo at a time, and its negative
        targets (once per subject; the networks are reused).

        Raises:
            ValueError: no photo, or the ``generic`` negative without generic images.
        """
        device = next(next(iter(self.nets.values())).parameters()).device
        photos = as_photos(subject)
        self.references = {name: embed_photos(net, photos, device) for name, net in self.nets.items()}
        self.targets = NegativeTargets.embed(self.nets, photos, generic, self.negatives, device)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for images (B, 3, H, W) in [0, 1].

        Returns:
            ``{name: 1 - s_n}`` per network (each of shape (B,)); ``negative/blur`` and ``negative/generic`` when on
            (each (B,), `NegativeTargets.terms`); and ``"loss"``, ``sum_n w_n (1 - s_n)`` plus the weighted
            negative terms, averaged over the batch (a scalar).
        """
        embeds = {name: F.normalize(net(images), dim=-1) for name, net in self.nets.items()}
        similarity = {name: cosines(embed, self.references[name]).mean(-1) for name, embed in embeds.items()}
        terms = {name: 1 - s for name, s in similarity.items()}
        loss = sum(self.weights[name] * term for name, term in terms.items())
        negatives = self.targets.terms(embeds, similarity, self.weights)
        if negatives:
            terms.update(negatives)
            loss = loss + negative_loss(negatives, self.negatives)
        terms["loss"] = loss.mean()
        return terms
