"""The similarity loss of SISO (paper Eq. 2): ``a * (1 - cos DINO) + b * (1 - cos IR)``.

The networks are a plain registry (`SIMILARITY_NETS`): each entry loads with one signature,
``from_pretrained(model, resolution, device, dtype)``, and maps images (B, 3, H, W) in [0, 1] to embeddings (B, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from siso.config import SimilaritySettings
from siso.images import pil_to_tensor
from siso.losses.embeddings import ClipImageEmbedding, DinoEmbedding, Embedding

SIMILARITY_NETS: dict[str, type[Embedding]] = {"dino": DinoEmbedding, "ir": ClipImageEmbedding}


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
        name: SIMILARITY_NETS[name].from_pretrained(model, resolution, device, dtype)
        for name, (model, resolution, _) in specs.items()
        if name in weights
    }
    return nets, weights


class SimilarityLoss(torch.nn.Module):
    """``sum_k w_k * (1 - cos(f_k(x), f_k(x_s)))`` over the similarity networks.

    The subject's embeddings are computed once, without gradient (`set_subject`); the networks are reused for the
    next subject.

    Args:
        nets: Name -> embedding network (`SIMILARITY_NETS`' classes, or any module images -> (B, D)).
        subject: The subject photo.
        weights: Name -> weight ``w_k``; ``None``: 1 each.
    """

    def __init__(self, nets: dict[str, torch.nn.Module], subject: Image.Image, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = weights or dict.fromkeys(nets, 1.0)
        self.nets = torch.nn.ModuleDict(nets)
        self.set_subject(subject)

    @classmethod
    def from_pretrained(
        cls, settings: SimilaritySettings, subject: Image.Image, device: str | torch.device, dtype: torch.dtype
    ) -> SimilarityLoss:
        """Load the networks of ``settings`` with a non-zero weight onto ``device`` in ``dtype``.

        Raises:
            siso.hub.ModelLoadError: a network cannot be loaded.
        """
        nets, weights = load_nets(settings, device, dtype)
        return cls(nets, subject, weights)

    @torch.no_grad()
    def set_subject(self, subject: Image.Image) -> None:
        """Compute the subject's reference embeddings (once per subject; the networks are reused)."""
        device = next(next(iter(self.nets.values())).parameters()).device
        reference = pil_to_tensor(subject).to(device)
        self.references = {name: F.normalize(net(reference), dim=-1) for name, net in self.nets.items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for images (B, 3, H, W) in [0, 1].

        Returns:
            ``{name: 1 - cos}`` per network (each of shape (B,)) and ``"loss"``, their weighted sum averaged over
            the batch (a scalar).
        """
        terms = {
            name: 1 - (F.normalize(net(images), dim=-1) * self.references[name]).sum(-1)
            for name, net in self.nets.items()
        }
        terms["loss"] = sum(self.weights[name] * term for name, term in terms.items()).mean()
        return terms


class SubjectLosses:
    """One `SimilarityLoss` per run of many subjects (an evaluation suite, the app): its networks are loaded at the
    first subject and reused, set to each new subject.

    Args:
        settings: The similarity settings.
        device, dtype: Where and in what the networks run.
    """

    def __init__(self, settings: SimilaritySettings, device: str | torch.device, dtype: torch.dtype):
        self.settings, self.device, self.dtype = settings, device, dtype
        self._loss: SimilarityLoss | None = None

    def __call__(self, subject: Image.Image) -> SimilarityLoss:
        """The loss with ``subject`` as its reference."""
        if self._loss is None:
            self._loss = SimilarityLoss.from_pretrained(self.settings, subject, self.device, self.dtype)
        else:
            self._loss.set_subject(subject)
        return self._loss
