"""The loss of a run, built in one place: `LossNetworks` loads the similarity networks once and builds every run's
loss on them (one subject anywhere: `SimilarityLoss`; several, or one in a box: `CompositionLoss`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from siso.config import ComposeSettings, NegativeSettings, SimilaritySettings
from siso.losses.composition import CompositionLoss
from siso.losses.negatives import Photos
from siso.losses.similarity import SimilarityLoss, load_nets

Box = tuple[int, int, int, int] | None


class LossNetworks:
    """The similarity networks of ``settings``, loaded at the first loss and shared by the losses built after it (the
    runs of the app and of an evaluation suite follow one another on the same networks).

    Args:
        settings: The similarity settings (networks, weights, input sides).
        device, dtype: Where and in what the networks run.
        nets: Networks already loaded and their weights (`siso.losses.load_nets`'s pair, or real-size networks built
            by the benchmark), instead of loading those of ``settings``.
    """

    def __init__(
        self,
        settings: SimilaritySettings,
        device: str | torch.device,
        dtype: torch.dtype,
        nets: tuple[dict[str, torch.nn.Module], dict[str, float] | None] | None = None,
    ):
        self.settings, self.device, self.dtype = settings, device, dtype
        self._nets = nets

    @property
    def nets(self) -> tuple[dict[str, torch.nn.Module], dict[str, float] | None]:
        """The networks and their weights, loaded at the first call.

        Raises:
            siso.hub.ModelLoadError: a network cannot be loaded.
        """
        if self._nets is None:
            self._nets = load_nets(self.settings, self.device, self.dtype)
        return self._nets

    def serves(self, settings: SimilaritySettings, device: str | torch.device, dtype: torch.dtype) -> bool:
        """Whether these are the networks a run with ``settings`` on ``device`` in ``dtype`` needs."""
        return (self.settings, torch.device(self.device), self.dtype) == (settings, torch.device(device), dtype)

    def loss(
        self,
        photos: Sequence[Photos],
        boxes: Sequence[Box] | None = None,
        terms: Sequence[str] | None = None,
        compose: ComposeSettings | None = None,
        negatives: NegativeSettings | None = None,
        generic: Sequence[Sequence[Image.Image]] | None = None,
    ) -> SimilarityLoss | CompositionLoss:
        """The loss of a run: of one subject anywhere in the image (no ``boxes``), or of each subject in its box.

        Args:
            photos: Per subject, its photo or photos.
            boxes: Per subject, its box in whole pixels of the model's image; ``None``: one subject, anywhere.
            terms: Per subject, the name of its identity term (with ``boxes``).
            compose: The terms of several subjects (with ``boxes``).
            negatives: The negative targets; ``None``: none.
            generic: Per subject, the generic images of its class (the ``generic`` negative's); ``None``: none.

        Raises:
            ValueError: as `SimilarityLoss` and `CompositionLoss` (a subject without photos, lengths that differ).
        """
        nets, weights = self.nets
        if boxes is None:
            if len(photos) != 1:
                raise ValueError(f"one subject anywhere in the image, got {len(photos)}: give each its box")
            return SimilarityLoss(nets, photos[0], weights, negatives, generic[0] if generic else ())
        if terms is None:
            raise ValueError("subjects in boxes need the names of their terms")
        return CompositionLoss(nets, photos, boxes, terms, weights, compose, negatives=negatives, generic=generic)
