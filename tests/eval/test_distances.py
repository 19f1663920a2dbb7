"""FID, KID and CMMD math against closed forms and independent computations."""

import itertools
import math

import pytest
import torch

from siso.eval.distances import cmmd, frechet_distance, kernel_inception_distance


def _gaussian(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(std), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


def test_fid_of_identical_sets_is_zero():
    x = _gaussian(200, [0.0] * 8, [1.0] * 8, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_independent_trace_formula():
    # tr sqrt(Sx Sy) = sum sqrt(eigvals(Sx Sy)): a different route (non-symmetric eigenvalues) to the same number.
    x = _gaussian(300, [0.0, 1.0, 2.0, 0.5], [1.0, 2.0, 0.5, 1.5], 1) @ torch.randn(4, 4, dtype=torch.float64)
    y = _gaussian(250, [1.0, 0.0, 2.0, 0.0], [0.7, 1.0, 1.5, 2.0], 2)
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    cross = torch.linalg.eigvals(cx @ cy).real.clamp(min=0).sqrt().sum()
    expected = (x.mean(0) - y.mean(0)).square().sum() + cx.trace() + cy.trace() - 2 * cross
    assert frechet_distance(x, y) == pytest.approx(float(expected), rel=1e-9)


def test_fid_of_two_gaussians_approaches_the_closed_form():
    # Diagonal covariances commute: FID = |mu1 - mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)) with variances s.
    mu1, mu2, sd1, sd2 = [0.0, 0.0, 1.0], [1.0, 2.0, 1.0], [1.0, 2.0, 0.5], [2.0, 1.0, 0.5]
    closed = sum((a - b) ** 2 for a, b in zip(mu1, mu2, strict=True)) + sum(
        (a - b) ** 2 for a, b in zip(sd1, sd2, strict=True)
    )
    value = frechet_distance(_gaussian(200_000, mu1, sd1, 3), _gaussian(200_000, mu2, sd2, 4))
    assert value == pytest.approx(closed, rel=0.01)


def _naive_mmd2_unbiased(a, b, kernel):
    n, m = len(a), len(b)
    xx = sum(kernel(a[i], a[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    yy = sum(kernel(b[i], b[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(kernel(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(xx + yy - 2 * xy)


def test_kid_equals_the_unbiased_estimator_written_out():
    x, y = _gaussian(12, [0.0] * 5, [1.0] * 5, 5), _gaussian(12, [0.3] * 5, [1.2] * 5, 6)
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=12)  # whole sets, order irrelevant
    expected = _naive_mmd2_unbiased(x, y, lambda a, b: (a @ b / 5 + 1) ** 3)
    assert mean == pytest.approx(expected, rel=1e-9) and std == 0.0


def test_kid_is_unbiased():
    # Same distribution: the estimator averages to ~0 (a biased one would be positive); different: clearly > 0.
    same = [
        kernel_inception_distance(
            _gaussian(50, [0.0] * 4, [1.0] * 4, 2 * s), _gaussian(50, [0.0] * 4, [1.0] * 4, 2 * s + 1), subsets=5
        )[0]
        for s in range(40)
    ]
    different = kernel_inception_distance(
        _gaussian(50, [0.0] * 4, [1.0] * 4, 0), _gaussian(50, [1.0] * 4, [1.0] * 4, 1)
    )
    spread = torch.tensor(same).std().item() / math.sqrt(len(same))
    assert abs(sum(same) / len(same)) < 3 * spread
    assert different[0] > 20 * spread


def test_cmmd_reference_definition():
    x, y = _gaussian(10, [0.0] * 3, [5.0] * 3, 7), _gaussian(8, [4.0] * 3, [5.0] * 3, 8)
    assert cmmd(x, x) == 0.0

    def k(a, b):
        return math.exp(-float((a - b).square().sum()) / (2 * 10.0**2))

    def mean_k(a, b):
        return sum(k(p, q) for p in a for q in b) / (len(a) * len(b))

    expected = 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))
    assert cmmd(x, y) == pytest.approx(expected, rel=1e-9)


def test_too_few_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def test_fid_and_kid_match_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd

    x = _gaussian(64, [0.0] * 6, [1.0, 2.0, 0.5, 1.0, 1.5, 1.0], 11)
    y = _gaussian(64, [0.5] * 6, [1.0] * 6, 12)
    expected_fid = _compute_fid(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
    assert frechet_distance(x, y) == pytest.approx(float(expected_fid), rel=1e-6)
    # One subset holding every sample: torchmetrics' KID value for it is poly_mmd on the whole sets.
    mean, _ = kernel_inception_distance(x, y, subsets=1, subset_size=64)
    assert mean == pytest.approx(float(poly_mmd(x, y)), rel=1e-9)
