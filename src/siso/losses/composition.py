"""The loss of several subjects in one image, each judged on its own box (or of one subject in a box).

Each subject's box is cropped out of the generated image (a slice: the gradient reaches every pixel of it), and all
the crops go through each similarity network in one call. The terms and their defaults are `ComposeSettings`'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from siso.config import ComposeSettings, SimilaritySettings
from siso.images import pil_to_tensor
from siso.losses.similarity import load_nets

# Whole pixels (x0, y0, x1, y1) of the generated image; ``None``: the whole image.
Box = tuple[int, int, int, int] | None


def presence_term(heat: torch.Tensor, inside: torch.Tensor, top_k: float) -> torch.Tensor:
    """BoxDiff's inner- and outer-box constraints on a subject-likeness map: the ``top_k`` share of highest values
    inside the box pulled towards 1, outside towards 0 (negative values outside cost nothing).

    Args:
        heat: (B, h, w) likeness of each cell to the subject (a cosine, so at most 1).
        inside: (h, w) bool, True on the box's cells; some cell must be outside.
        top_k: Share of each region's cells averaged, in (0, 1].

    Returns:
        (B,) ``(1 - mean top-k inside) + relu(mean top-k outside)``.
    """
    flat, inside = heat.flatten(1), inside.flatten()

    def top(values: torch.Tensor) -> torch.Tensor:
        return values.topk(max(1, math.ceil(top_k * values.shape[1])), dim=1).values.mean(1)

    return (1 - top(flat[:, inside])) + top(flat[:, ~inside]).clamp(min=0)


def box_cells(box: tuple[int, int, int, int], size: int, grid: int) -> torch.Tensor:
    """(grid, grid) bool: the cells of a square ``grid`` over a ``size`` px image whose centres lie in ``box``; at
    least the cell of the box's centre, so a box smaller than a cell still has one."""
    centres = (torch.arange(grid) + 0.5) * size / grid
    x0, y0, x1, y1 = box
    cols = (centres >= x0) & (centres < x1)
    rows = (centres >= y0) & (centres < y1)
    cells = rows[:, None] & cols[None, :]
    if not cells.any():
        cells[min(int((y0 + y1) / 2 * grid / size), grid - 1), min(int((x0 + x1) / 2 * grid / size), grid - 1)] = True
    return cells


class CompositionLoss(torch.nn.Module):
    """Identity of each subject on its box, leakage between subjects, presence in the boxes (`ComposeSettings`).

    With one subject and no box (or a box over the whole image) the loss is exactly `SimilarityLoss`'s.

    Args:
        nets: Name -> embedding network (``"dino"`` must be a `DinoEmbedding` for the presence term).
        subjects: The subject photos.
        boxes: Per subject, its box in whole pixels of the generated image, or ``None`` for the whole image.
        names: Per subject, the name of its identity term (``identity/<name>``).
        weights: Name -> weight of each network's ``1 - cos``; ``None``: 1 each.
        settings: Weights of the terms.

    Raises:
        ValueError: ``subjects``, ``boxes`` and ``names`` differ in length.
    """

    def __init__(
        self,
        nets: dict[str, torch.nn.Module],
        subjects: Sequence[Image.Image],
        boxes: Sequence[Box],
        names: Sequence[str],
        weights: dict[str, float] | None = None,
        settings: ComposeSettings | None = None,
    ):
        super().__init__()
        if not len(subjects) == len(boxes) == len(names):
            raise ValueError(f"{len(subjects)} subjects, {len(boxes)} boxes and {len(names)} names: one each")
        self.nets = torch.nn.ModuleDict(nets)
        self.weights = weights or dict.fromkeys(nets, 1.0)
        self.boxes, self.names = list(boxes), list(names)
        self.settings = settings or ComposeSettings()
        self.set_subjects(subjects)

    @classmethod
    def from_pretrained(
        cls,
        similarity: SimilaritySettings,
        subjects: Sequence[Image.Image],
        boxes: Sequence[Box],
        names: Sequence[str],
        settings: ComposeSettings,
        device: str | torch.device,
        dtype: torch.dtype,
    ) -> CompositionLoss:
        """Load the similarity networks of ``similarity`` (`siso.losses.similarity.load_nets`) onto ``device``.

        Raises:
            siso.hub.ModelLoadError: a network cannot be loaded.
        """
        nets, weights = load_nets(similarity, device, dtype)
        return cls(nets, subjects, boxes, names, weights, settings)

    @torch.no_grad()
    def set_subjects(self, subjects: Sequence[Image.Image]) -> None:
        """Compute each subject's reference embeddings, one photo at a time (as `SimilarityLoss` does), and how alike
        the photos are to each other under each network."""
        device = next(next(iter(self.nets.values())).parameters()).device
        photos = [pil_to_tensor(subject).to(device) for subject in subjects]
        # (K, D) per network.
        self.references = {
            name: torch.cat([F.normalize(net(photo), dim=-1) for photo in photos]) for name, net in self.nets.items()
        }
        self.alike = {name: refs @ refs.T for name, refs in self.references.items()}  # (K, K)

    def _boxed(self, size: tuple[int, int]) -> list[int]:
        """The subjects whose box leaves part of a ``size`` (height, width) image outside it."""
        height, width = size
        return [k for k, box in enumerate(self.boxes) if box is not None and box != (0, 0, width, height)]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for images (B, 3, H, W) in [0, 1].

        Returns:
            Per network ``1 - cos`` averaged over the subjects (``dino``, ``ir``); ``identity/<name>`` per subject
            (its weighted sum); ``leakage`` (several subjects) and ``presence`` (a boxed subject), each (B,); and
            ``"loss"``, the total averaged over the batch (a scalar).
        """
        batch, count = images.shape[0], len(self.boxes)
        crops = [images if box is None else images[..., box[1] : box[3], box[0] : box[2]] for box in self.boxes]
        boxed = self._boxed(images.shape[-2:]) if self.settings.presence_weight > 0 and "dino" in self.nets else []
        terms: dict[str, torch.Tensor] = {}
        cosines, heat = {}, None
        for name, net in self.nets.items():
            if name == "dino" and boxed:  # the whole image joins the crops' call, for its patch tokens
                embeds, patches = net([*crops, images], patches=True)
                embeds, patches = embeds[: count * batch], patches[count * batch :]
                refs = self.references[name][boxed]  # (K', D)
                heat = F.normalize(patches, dim=-1) @ refs.T  # (B, N, K')
            else:
                embeds = net(crops)
            # (K, B, K): cosine of subject k's crop in image b with subject j's photo. A product and a sum, as
            # `SimilarityLoss` takes it (a matrix product sums in another order: one subject would not match it).
            products = F.normalize(embeds, dim=-1)[:, None, :] * self.references[name][None]
            cosines[name] = products.sum(-1).view(count, batch, count)
        own = torch.arange(count)
        distances = {name: 1 - cos[own, :, own] for name, cos in cosines.items()}  # (K, B)
        identity = sum(self.weights[name] * distance for name, distance in distances.items())  # (K, B)
        terms.update({name: distance.mean(0) for name, distance in distances.items()})
        terms.update({f"identity/{name}": identity[k] for k, name in enumerate(self.names)})
        mean = identity.mean(0)
        total = mean + self.settings.worst_weight * (identity.max(0).values - mean)
        if count > 1:
            others = ~torch.eye(count, dtype=torch.bool, device=images.device)
            excess = sum(
                self.weights[name] * (cos - self.alike[name][:, None, :] - self.settings.leak_margin).relu()
                for name, cos in cosines.items()
            )  # (K, B, K)
            terms["leakage"] = excess.permute(1, 0, 2)[:, others].mean(1)
            total = total + self.settings.leak_weight * terms["leakage"]
        if heat is not None:
            grid = math.isqrt(heat.shape[1])
            heat = heat.view(batch, grid, grid, len(boxed))
            side = images.shape[-1]  # (the images are square: the DINOv2 grid spans all of them)
            terms["presence"] = torch.stack(
                [
                    presence_term(heat[..., i], box_cells(self.boxes[k], side, grid), self.settings.presence_top_k)
                    for i, k in enumerate(boxed)
                ]
            ).mean(0)
            total = total + self.settings.presence_weight * terms["presence"]
        terms["loss"] = total.mean()
        return terms
