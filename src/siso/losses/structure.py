"""The structure term of a refine: keep the layout and pose of the input inside each subject's region while its
appearance (identity) changes.

Tumanyan et al. 2022 ("Splicing ViT Features for Semantic Appearance Transfer", CVPR) show that the self-similarity
of a DINO ViT's last-layer patch features encodes an image's structure (parts, pose, layout) and discards its
appearance, while the CLS token carries the appearance. Their structure loss is the distance between the
self-similarity matrices of the output and of the structure image; siso's is the same on DINOv2's last-layer patch
tokens, on each region's crop:

    ``L_struct = mean_k mean_{i,j} (S(crop_k(x))_ij - S(crop_k(input))_ij)^2``,  ``S(t)_ij = cos(t_i, t_j)``

a mean rather than their Frobenius norm, so that its scale does not depend on the number of tokens (the network's
input side). The identity term moves the CLS token; this term holds the tokens' relations. Chosen over a low-pass
pixel MSE because a low-pass MSE also holds the colours, which are part of the identity a refine must fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from siso.losses.embeddings import DinoEmbedding

Box = tuple[int, int, int, int]


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch tokens -> (B, N, N) cosine similarity of every pair of tokens."""
    unit = F.normalize(tokens, dim=-1)
    return unit @ unit.transpose(1, 2)


class StructureLoss(torch.nn.Module):
    """``L_struct`` of the module docstring, against a fixed input image.

    Args:
        dino: The DINOv2 network (its patch tokens; the loss's own, shared).
        target: (1, 3, R, R) in [0, 1]: the image whose structure is kept (the input at model resolution).
        boxes: Per region, its box (x0, y0, x1, y1) in whole pixels of the R x R image.

    Raises:
        ValueError: no box, or a box that is empty or reaches outside the image.
    """

    def __init__(self, dino: DinoEmbedding, target: torch.Tensor, boxes: Sequence[Box]):
        super().__init__()
        side = target.shape[-1]
        if not boxes:
            raise ValueError("the structure term needs at least one region")
        for box in boxes:
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= side and 0 <= y0 < y1 <= side):
                raise ValueError(f"box {box} is empty or reaches outside the {side} px image")
        self.dino, self.boxes = dino, [tuple(box) for box in boxes]
        with torch.no_grad():
            self.register_buffer("targets", self._similarities(target))  # (K, N, N)

    def _similarities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (K * B, N, N): each region's crop of each image, region by region."""
        crops = [images[..., y0:y1, x0:x1] for x0, y0, x1, y1 in self.boxes]
        return self_similarity(self.dino(crops, patches=True)[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) images in [0, 1] -> (B,) ``L_struct`` (differentiable w.r.t. the images)."""
        batch = images.shape[0]
        similarities = self._similarities(images).unflatten(0, (len(self.boxes), batch))  # (K, B, N, N)
        return (similarities - self.targets[:, None]).square().mean(dim=(2, 3)).mean(0)
