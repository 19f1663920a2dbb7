"""The loss of several subjects in one image, each judged on its own box (or of one subject in a box).

Each subject's box is cropped out of the generated image (a slice: the gradient reaches every pixel of it), and all
the crops go through each similarity network in one call. The terms and their defaults are `ComposeSettings`'; a
subject may have several photos, and the negative targets of `NegativeSettings` apply per subject
(`siso.losses.negatives`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from siso.config import ComposeSettings, NegativeSettings, SimilaritySettings
from siso.losses.negatives import NegativeTargets, Photos, as_photos, cosines, embed_photos, negative_loss
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

    A subject's cosine under each network is the mean over its photos, ``s_n(x, r_k) = mean_p cos(f_n(x), f_n(r_kp))``,
    and how alike subjects k and j are (the leakage term's ``cos_n(r_k, r_j)``) the mean cosine over all pairs of
    their photos. The negative terms (`NegativeSettings`) are taken per subject on its crop, against its own photos'
    blur and its own generic images, and averaged over the subjects. With one subject and no box (or a box over the
    whole image) the loss is exactly `SimilarityLoss`'s, negatives included.

    Args:
        nets: Name -> embedding network (``"dino"`` must be a `DinoEmbedding` for the presence term).
        subjects: Per subject, its photo or several photos of it.
        boxes: Per subject, its box in whole pixels of the generated image, or ``None`` for the whole image.
        names: Per subject, the name of its identity term (``identity/<name>``).
        weights: Name -> weight of each network's ``1 - cos``; ``None``: 1 each.
        settings: Weights of the terms.
        negatives: The negative targets; ``None``: none.
        generic: Per subject, generic images of its class (for the ``generic`` negative); ``None``: none.

    Raises:
        ValueError: ``subjects``, ``boxes``, ``names`` (and ``generic``) differ in length; a subject has no photo;
            the ``generic`` negative without generic images for some subject.
    """

    def __init__(
        self,
        nets: dict[str, torch.nn.Module],
        subjects: Sequence[Photos],
        boxes: Sequence[Box],
        names: Sequence[str],
        weights: dict[str, float] | None = None,
        settings: ComposeSettings | None = None,
        negatives: NegativeSettings | None = None,
        generic: Sequence[Sequence[Image.Image]] | None = None,
    ):
        super().__init__()
        if not len(subjects) == len(boxes) == len(names):
            raise ValueError(f"{len(subjects)} subjects, {len(boxes)} boxes and {len(names)} names: one each")
        self.nets = torch.nn.ModuleDict(nets)
        self.weights = weights or dict.fromkeys(nets, 1.0)
        self.boxes, self.names = list(boxes), list(names)
        self.settings = settings or ComposeSettings()
        self.negatives = negatives or NegativeSettings()
        self.set_subjects(subjects, generic)

    @classmethod
    def from_pretrained(
        cls,
        similarity: SimilaritySettings,
        subjects: Sequence[Photos],
        boxes: Sequence[Box],
        names: Sequence[str],
        settings: ComposeSettings,
        device: str | torch.device,
        dtype: torch.dtype,
        negatives: NegativeSettings | None = None,
        generic: Sequence[Sequence[Image.Image]] | None = None,
    ) -> CompositionLoss:
        """Load the similarity networks of ``similarity`` (`siso.losses.similarity.load_nets`) onto ``device``.

        Raises:
            siso.hub.ModelLoadError: a network cannot be loaded.
            ValueError: as the constructor.
        """
        nets, weights = load_nets(similarity, device, dtype)
        return cls(nets, subjects, boxes, names, weights, settings, negatives, generic)

    @torch.no_grad()
    def set_subjects(self, subjects: Sequence[Photos], generic: Sequence[Sequence[Image.Image]] | None = None) -> None:
        """Compute the reference embeddings of every subject's photos, one photo at a time (as `SimilarityLoss` does),
        how alike the subjects are under each network, and each subject's negative targets.

        Raises:
            ValueError: ``generic`` and ``subjects`` differ in length; as `siso.losses.negatives.NegativeTargets.embed`.
        """
        if generic is not None and len(generic) != len(subjects):
            raise ValueError(f"{len(subjects)} subjects and {len(generic)} sets of generic images: one each")
        device = next(next(iter(self.nets.values())).parameters()).device
        photos = [as_photos(subject) for subject in subjects]
        ends = list(itertools.accumulate(len(own) for own in photos))
        self.spans = [slice(end - len(own), end) for end, own in zip(ends, photos, strict=True)]  # each subject's rows
        every = [photo for own in photos for photo in own]
        self.references = {name: embed_photos(net, every, device) for name, net in self.nets.items()}  # (sum P_k, D)
        # (K, K): the mean cosine over all pairs of photos of k and of j (a symmetric matrix, so which index the
        # inner `_per_subject` averages does not matter).
        self.alike = {
            name: self._per_subject(self._per_subject(refs @ refs.T).T) for name, refs in self.references.items()
        }
        generic = generic if generic is not None else [()] * len(photos)
        self.targets = [
            NegativeTargets.embed(self.nets, own, images, self.negatives, device)
            for own, images in zip(photos, generic, strict=True)
        ]

    def _per_subject(self, values: torch.Tensor) -> torch.Tensor:
        """(..., sum P_k) values per photo -> (..., K) their means over each subject's photos."""
        return torch.stack([values[..., span].mean(-1) for span in self.spans], -1)

    def _boxed(self, size: tuple[int, int]) -> list[int]:
        """The subjects whose box leaves part of a ``size`` (height, width) image outside it."""
        height, width = size
        return [k for k, box in enumerate(self.boxes) if box is not None and box != (0, 0, width, height)]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for images (B, 3, H, W) in [0, 1].

        Returns:
            Per network ``1 - cos`` averaged over the subjects (``dino``, ``ir``); ``identity/<name>`` per subject
            (its weighted sum); ``leakage`` (several subjects), ``presence`` (a boxed subject) and
            ``negative/blur``, ``negative/generic`` (when on, averaged over the subjects), each (B,); and ``"loss"``,
            the total averaged over the batch (a scalar).
        """
        batch, count = images.shape[0], len(self.boxes)
        crops = [images if box is None else images[..., box[1] : box[3], box[0] : box[2]] for box in self.boxes]
        boxed = self._boxed(images.shape[-2:]) if self.settings.presence_weight > 0 and "dino" in self.nets else []
        terms: dict[str, torch.Tensor] = {}
        units, similarity, heat = {}, {}, None
        for name, net in self.nets.items():
            if name == "dino" and boxed:  # the whole image joins the crops' call, for its patch tokens
                embeds, patches = net([*crops, images], patches=True)
                embeds, patches = embeds[: count * batch], patches[count * batch :]
                # (B, N, K'): each patch token's cosine with a boxed subject, averaged over its photos.
                heat = self._per_subject(F.normalize(patches, dim=-1) @ self.references[name].T)[..., boxed]
            else:
                embeds = net(crops)
            units[name] = F.normalize(embeds, dim=-1)
            # (K, B, K): cosine of subject k's crop in image b with subject j's photos, averaged over them.
            similarity[name] = self._per_subject(cosines(units[name], self.references[name])).view(count, batch, count)
        own = torch.arange(count)
        distances = {name: 1 - cos[own, :, own] for name, cos in similarity.items()}  # (K, B)
        identity = sum(self.weights[name] * distance for name, distance in distances.items())  # (K, B)
        terms.update({name: distance.mean(0) for name, distance in distances.items()})
        terms.update({f"identity/{name}": identity[k] for k, name in enumerate(self.names)})
        mean = identity.mean(0)
        total = mean + self.settings.worst_weight * (identity.max(0).values - mean)
        if count > 1:
            others = ~torch.eye(count, dtype=torch.bool, device=images.device)
            excess = sum(
                self.weights[name] * (cos - self.alike[name][:, None, :] - self.settings.leak_margin).relu()
                for name, cos in similarity.items()
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
        if self.negatives.kinds:
            per_subject = [
                targets.terms(
                    {name: unit.view(count, batch, -1)[k] for name, unit in units.items()},
                    {name: cos[k, :, k] for name, cos in similarity.items()},
                    self.weights,
                )
                for k, targets in enumerate(self.targets)
            ]
            negatives = {
                name: torch.stack([terms_k[name] for terms_k in per_subject]).mean(0) for name in per_subject[0]
            }
            terms.update(negatives)
            total = total + negative_loss(negatives, self.negatives)
        terms["loss"] = total.mean()
        return terms
