"""LPIPS (alex, v0.1) in plain torch: distance properties, masked background scores, checkpoint names and loading.

All models here have seeded random weights; nothing is downloaded. Against the real lpips 0.1.4 code (run outside
the repo with torchvision stubbed) this module gave bit-identical outputs for shared weights.
"""

import json
from pathlib import Path

import pytest
import torch

from siso.eval.lpips import LPIPS, AlexNetFeatures, LPIPSHeads, load_lpips, masked_lpips

# Generated once by a throwaway script outside the repo: the AlexNet class from torchvision 0.24.1's
# torchvision/models/alexnet.py (wheel from `pip download --no-deps torchvision==0.24.1`, exec'd with torch.nn only
# because torchvision cannot be imported here) gave `AlexNet().state_dict()` keys/shapes, and lpips 0.1.4's
# lpips/weights/v0.1/alex.pth (from its wheel, read with torch.load(weights_only=True)) gave the head keys/shapes.
SHAPES = json.loads((Path(__file__).parents[1] / "fixtures" / "lpips_alex_state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def model() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS().eval().requires_grad_(False)


def _images(size: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Smooth colour ramps plus mild noise: more image-like than pure noise, so layer maps vary in space."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xx, yy, xx * yy]).expand(batch, 3, size, size)
    return (base + 0.05 * torch.randn(batch, 3, size, size, generator=gen)).clamp(0, 1)


def test_identical_zero_different_positive_symmetric(model: LPIPS) -> None:
    x = _images(64, batch=1)
    y = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    # One batch holds the pairs (x, x), (x, y) and (y, x), which also checks that samples do not mix.
    first, second = torch.cat([x, x, y]), torch.cat([x, y, x])
    scalar, spatial = model(first, second), model(first, second, spatial=True)
    assert scalar.shape == (3,) and spatial.shape == (3, 1, 64, 64)
    assert scalar[0] == 0 and (spatial[0] == 0).all()
    assert scalar[1] > 0 and (spatial >= 0).all() and spatial[1].mean() > 0
    torch.testing.assert_close(scalar[1], scalar[2])
    torch.testing.assert_close(spatial[1], spatial[2])


def test_spatial_mean_versus_scalar(model: LPIPS) -> None:
    x, y = _images(64, seed=1), _images(64, seed=3)
    maps = model.layer_maps(x, y)
    scalar, spatial_mean = model(x, y), model(x, y, spatial=True).mean(dim=(1, 2, 3))
    # Exact (as in lpips): the scalar is the sum over layers of each layer map's mean at its own resolution.
    torch.testing.assert_close(scalar, sum(m.mean(dim=(1, 2, 3)) for m in maps))
    # Bilinear upsampling is linear with non-negative weights that sum to 1 per output pixel, so each layer's
    # upsampled mean is a weighted average of its cells: exactly within [min, max] of that layer's map.
    assert (spatial_mean >= sum(m.amin(dim=(1, 2, 3)) for m in maps) - 1e-7).all()
    assert (spatial_mean <= sum(m.amax(dim=(1, 2, 3)) for m in maps) + 1e-7).all()
    # Not an exact mean: AlexNet map sizes never divide the input size (64 -> 15, 7, 3, 3, 3 cells), so border
    # cells get weights unlike interior ones. The two agree closely (about 1e-4 relative here), not bitwise.
    torch.testing.assert_close(spatial_mean, scalar, rtol=1e-2, atol=0)


def test_masked_lpips_ignores_the_subject_region(model: LPIPS) -> None:
    size, edge = 160, 32
    x = _images(size, batch=1)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 1, size, size)
    mask[..., :edge, :edge] = 1  # the "subject": top-left corner
    y_inside = torch.where(mask.bool(), noise, x)
    y_outside = torch.where(mask.flip(-1, -2).bool(), noise, x)  # same-size edit in the opposite corner
    both_x, both_y = torch.cat([x, x]), torch.cat([y_inside, y_outside])

    masked = masked_lpips(model, both_x, both_y, mask)
    # Features have large receptive fields (relu5 cells see 163 px), so an edit inside the mask also changes the
    # map outside it: masking cannot give 0, and with these random weights the leak is large (the in-mask edit
    # scores about 0.48x the same edit made in the background, 0.31x its unmasked score). So we require only a
    # clear reduction here, and exactness where it holds, below.
    assert masked[0] < 0.6 * masked[1]
    assert masked[0] < 0.5 * model(x, y_inside)[0]
    # The leak is local: relu5 cells touched by the 32 px corner reach only to pixel ~132 after upsampling (earlier
    # layers reach less), so the map is non-zero next to the mask but exactly zero beyond 136 px. Scoring with
    # the mask dilated by that reach therefore ignores the subject edit exactly but still sees the background one.
    leak = model(x, y_inside, spatial=True)[0, 0]
    assert leak[:edge, edge : edge + 16].amax() > 0
    dilated = torch.zeros(size, size)
    dilated[:136, :136] = 1
    far = masked_lpips(model, both_x, both_y, dilated)
    assert far[0] == 0 and far[1] > 0


def test_masked_lpips_mask_forms_and_errors(model: LPIPS) -> None:
    x, y = _images(64, seed=1), _images(64, seed=5)
    full_mean = model(x, y, spatial=True).mean(dim=(1, 2, 3))
    torch.testing.assert_close(masked_lpips(model, x, y, torch.zeros(64, 64)), full_mean)
    mask = torch.zeros(64, 64)
    mask[10:40, 20:50] = 1
    torch.testing.assert_close(
        masked_lpips(model, x, y, mask), masked_lpips(model, x, y, mask.bool().expand(2, 1, 64, 64))
    )
    with pytest.raises(ValueError, match="no background pixel"):
        masked_lpips(model, x, y, torch.ones(64, 64))
    partly_full = torch.zeros(2, 1, 64, 64)
    partly_full[1] = 1
    with pytest.raises(ValueError, match="no background pixel"):
        masked_lpips(model, x, y, partly_full)
    with pytest.raises(ValueError, match="mask must be"):
        masked_lpips(model, x, y, torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="at least 31x31"):
        model(x[..., :30, :30], y[..., :30, :30])


def test_state_dict_names_match_checkpoints() -> None:
    trunk = {k: list(v.shape) for k, v in AlexNetFeatures().state_dict().items()}
    expected_trunk = {k: v for k, v in SHAPES["torchvision_alexnet"].items() if k.startswith("features.")}
    assert trunk == expected_trunk
    assert {k: list(v.shape) for k, v in LPIPSHeads().state_dict().items()} == SHAPES["lpips_v0.1_alex"]
    # Nothing else (the ScalingLayer constants are non-persistent buffers) ends up in the full model's state dict.
    assert set(LPIPS().state_dict()) == {f"trunk.{k}" for k in trunk} | {
        f"heads.{k}" for k in SHAPES["lpips_v0.1_alex"]
    }


def _fake_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(6)
    alexnet = {k: torch.randn(shape, generator=gen) for k, shape in SHAPES["torchvision_alexnet"].items()}
    # The classifier is dropped on load; tiny stand-ins keep the file small (the real ones are ~230 MB).
    alexnet |= {k: torch.zeros(1) for k in alexnet if k.startswith("classifier.")}
    heads = {k: torch.rand(shape, generator=gen) for k, shape in SHAPES["lpips_v0.1_alex"].items()}
    torch.save(alexnet, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(heads, tmp_path / "alex.pth")
    return tmp_path / "alexnet-owt-7be5be79.pth", tmp_path / "alex.pth"


def test_load_lpips_round_trip(tmp_path: Path) -> None:
    alexnet_path, heads_path = _fake_checkpoints(tmp_path)
    loaded = load_lpips(alexnet_path, heads_path)
    alexnet, heads = torch.load(alexnet_path, weights_only=True), torch.load(heads_path, weights_only=True)
    for key, value in loaded.trunk.state_dict().items():
        assert torch.equal(value, alexnet[key])
    for key, value in loaded.heads.state_dict().items():
        assert torch.equal(value, heads[key])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = _images(48, batch=1)
    assert loaded(x, x.flip(-1)).item() > 0


def test_load_lpips_errors(tmp_path: Path) -> None:
    alexnet_path, heads_path = _fake_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth.*download.pytorch.org"):
        load_lpips(tmp_path / "missing.pth", heads_path)
    with pytest.raises(FileNotFoundError, match="alex.pth.*lpips"):
        load_lpips(alexnet_path, tmp_path / "missing.pth")
    # Strict loading: a key that is neither a trunk weight nor an explicitly ignored classifier key is an error.
    torch.save({**torch.load(alexnet_path, weights_only=True), "extra.weight": torch.zeros(1)}, alexnet_path)
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_lpips(alexnet_path, heads_path)
    _fake_checkpoints(tmp_path)
    torch.save({k: -v for k, v in torch.load(heads_path, weights_only=True).items()}, heads_path)
    with pytest.raises(ValueError, match="negative head weights"):
        load_lpips(alexnet_path, heads_path)
