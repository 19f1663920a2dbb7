"""Set-level metrics: one number for all generated images against a reference set (naturalness).

The reference set is a folder of images: the vanilla model's outputs for the same prompts (the paper's generation
protocol) or the inputs (editing). Each entry embeds both sets with one network and applies a distance from
`siso.eval.distances`; all share the signature ``build(model, device) -> metric(generated, reference) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from siso.eval.distances import cmmd, frechet_distance, kernel_inception_distance
from siso.eval.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL
from siso.eval.metrics import image_embedder, read_rgb, to_batch
from siso.eval.suites import IMAGE_SUFFIXES, SuiteError

BATCH = 16


def image_files(root: str | Path) -> list[Path]:
    """Every image under ``root`` (recursively), sorted.

    Raises:
        SuiteError: ``root`` is not a folder or holds no images.
    """
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not files:
        raise SuiteError(f"reference folder {root} has no images")
    return files


class SetMetric:
    """Embed both sets with one image network and compare the feature sets with ``distance``."""

    def __init__(self, kind: str, model: str, device: str, distance: Callable[[torch.Tensor, torch.Tensor], float]):
        self.embed = image_embedder(kind, model, device)
        self.device = device
        self.distance = distance

    @torch.no_grad()
    def features(self, paths: list[Path]) -> torch.Tensor:
        """(N, D) features of the images at ``paths``, embedded in batches of 16."""
        chunks = []
        for i in range(0, len(paths), BATCH):
            images = to_batch([read_rgb(p) for p in paths[i : i + BATCH]], self.embed.resolution)
            chunks.append(self.embed(images.to(self.device)).cpu())
        return torch.cat(chunks)

    def __call__(self, generated: list[Path], reference: list[Path]) -> float:
        return self.distance(self.features(generated), self.features(reference))


@dataclass(frozen=True)
class SetMetricSpec:
    description: str
    default_model: str | None
    build: Callable[[str | None, str], SetMetric]


def _inception(weights: str | None, device: str, distance) -> SetMetric:
    if weights is None:
        raise ValueError(
            f"FID/KID need the FID Inception weights: download {FID_WEIGHTS_URL} and pass "
            f"--metric-model fid=PATH/{FID_WEIGHTS_NAME} (and kid=... for KID)"
        )
    return SetMetric("inception", weights, device, distance)


SET_METRICS: dict[str, SetMetricSpec] = {
    "fid": SetMetricSpec(
        "naturalness, FID: Frechet distance of FID-Inception pool3 features (weights file required)",
        None,
        lambda weights, device: _inception(weights, device, frechet_distance),
    ),
    "kid": SetMetricSpec(
        "naturalness, KID: unbiased cubic-kernel MMD of FID-Inception features, mean over 100 subsets",
        None,
        lambda weights, device: _inception(weights, device, lambda x, y: kernel_inception_distance(x, y)[0]),
    ),
    "cmmd": SetMetricSpec(
        "naturalness, CMMD: RBF MMD of CLIP ViT-L/14-336 embeddings, sigma 10, x1000",
        "openai/clip-vit-large-patch14-336",
        lambda model, device: SetMetric("clip", model, device, cmmd),
    ),
    "fd_dinov2": SetMetricSpec(
        "naturalness, Frechet distance of DINOv2 features (FD-DINOv2)",
        "facebook/dinov2-large",
        lambda model, device: SetMetric("dinov2", model, device, frechet_distance),
    ),
    "kd_dinov2": SetMetricSpec(
        "naturalness, kernel (KID-style, unbiased) distance of DINOv2 features",
        "facebook/dinov2-large",
        lambda model, device: SetMetric("dinov2", model, device, lambda x, y: kernel_inception_distance(x, y)[0]),
    ),
}
