"""Distances between two sets of image features: FID, KID and CMMD (the math only; features come from elsewhere).

All functions take feature matrices of shape (N, D) and (M, D) and compute in float64.
"""

from __future__ import annotations

import torch


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017, Eq. 6).

    ``|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2)``; the symmetric form has the same trace as
    ``(S_x S_y)^1/2`` and needs only symmetric eigendecompositions.

    Args:
        x: (N, D) features, N >= 2.
        y: (M, D) features, M >= 2.
    """
    x, y = x.double(), y.double()
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root_x = _sqrtm_psd(cov_x)
    cross = _sqrtm_psd(root_x @ cov_y @ root_x)
    value = (mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross.trace()
    return float(value.clamp(min=0))


def _mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> torch.Tensor:
    n, m = k_xx.shape[0], k_yy.shape[0]
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * k_xy.mean()


def kernel_inception_distance(
    x: torch.Tensor, y: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel ``(x.y / D + 1)^3``.

    Averaged over random subsets of ``min(subset_size, N, M)`` samples drawn without replacement, as torchmetrics
    and the original implementation do.

    Returns:
        (mean, standard deviation) over the subsets.
    """
    x, y = x.double(), y.double()
    size = min(subset_size, x.shape[0], y.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    dim = x.shape[1]
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        a = x[torch.randperm(x.shape[0], generator=generator)[:size]]
        b = y[torch.randperm(y.shape[0], generator=generator)[:size]]
        k_xx, k_yy, k_xy = ((p @ q.T / dim + 1) ** 3 for p, q in ((a, a), (b, b), (a, b)))
        values.append(_mmd2_unbiased(k_xx, k_yy, k_xy))
    stacked = torch.stack(values)
    return float(stacked.mean()), float(stacked.std(unbiased=False))


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD (Jayasumana et al. 2024): MMD^2 with a Gaussian RBF kernel ``exp(-|a-b|^2 / (2 sigma^2))`` between CLIP
    embeddings, times ``scale`` (paper: sigma 10, scale 1000).

    Uses the plain means of the kernel matrices (diagonals included), as the paper's reference implementation does,
    so numbers are comparable with published CMMD values; identical sets give exactly 0.
    """
    x, y = x.double(), y.double()
    gamma = 1.0 / (2 * sigma**2)
    k_xx, k_yy, k_xy = (torch.exp(-gamma * torch.cdist(p, q).square()).mean() for p, q in ((x, x), (y, y), (x, y)))
    return float(scale * (k_xx + k_yy - 2 * k_xy))
