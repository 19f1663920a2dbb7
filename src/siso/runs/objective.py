"""What a learning run optimizes, put together in one order (`objective`): the generic negatives, the IP-Adapter,
the loss."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from siso.compose import Subject
from siso.config import SisoConfig
from siso.losses.composition import CompositionLoss
from siso.losses.similarity import SimilarityLoss
from siso.runs.models import Models
from siso.vision.grounding import DEFAULT_DETECTOR


def objective(
    models: Models,
    config: SisoConfig,
    subjects: Sequence[Subject],
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
    terms: Sequence[str] | None = None,
    classes: Sequence[str | None] | None = None,
    detector: str = DEFAULT_DETECTOR,
) -> tuple[SimilarityLoss | CompositionLoss, list[list[Image.Image]] | None]:
    """What a run optimizes, put together in the one order every run follows: the generic negatives first (drawn by
    the frozen model: the class's images, not the subject's), then the IP-Adapter (it sees the subject's photos,
    before any LoRA), then the loss on the models' shared networks.

    Args:
        models: The backbone (without LoRA) and the similarity networks.
        config: ``negatives``, ``ip_adapter``, ``similarity`` and ``compose`` are used.
        subjects: The subjects (one anywhere without ``boxes``).
        boxes, terms: Per subject, its box in whole pixels of the model's image and its terms' name; ``None``: one
            subject anywhere.
        classes: Per subject, its class where known (the generic negative's; else named by ``detector``).

    Returns:
        The loss and, per subject, the generic images it uses (``None``: none).
    """
    generic = models.generic(config, subjects, classes, detector)
    if config.ip_adapter.enabled:
        models.backbone(config).load_ip_adapter(config.ip_adapter, subjects[0].photos)
    photos = [subject.photos for subject in subjects]
    loss = models.networks(config).loss(photos, boxes, terms, config.compose, config.negatives, generic)
    return loss, generic
