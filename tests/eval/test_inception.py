"""FID Inception: architecture matches pytorch-fid's, TF-style pooling, feature shape, weight loading."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siso.eval.inception import (
    FID_WEIGHTS_NAME,
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE,
    FIDInceptionV3,
    load_fid_inception,
)

# {state-dict key: shape} of pytorch-fid 0.3.0's `fid_inception_v3()` network (torchvision 0.29.1 Inception3 with
# the FID blocks patched in), i.e. the keys of pt_inception-2015-12-05-6726825d.pth. Generated once by a throwaway
# script outside the repo: both wheels were fetched with `pip download --no-deps` and unzipped (not installed),
# torchvision/models/inception.py was exec'd with its relative imports stubbed out, pytorch_fid/inception.py was
# exec'd against that fake `torchvision` module with the weight download and load replaced by no-ops, and
# `{k: list(v.shape) for k, v in fid_inception_v3().state_dict().items()}` was dumped to JSON. The same script also
# checked that FIDInceptionV3, given the reference network's (randomised) weights, returns features bit-identical to
# pytorch-fid's `InceptionV3([3])` wrapper.
SHAPES_FIXTURE = Path(__file__).parents[1] / "fixtures" / "fid_inception_state_dict_shapes.json"


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """He-initialise the convs and give every batch norm non-trivial statistics.

    With torch's default init the image's signal fades within a few dozen layers and all images get nearly the
    same features; He init keeps it alive, so the features depend on the input as with the real weights.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    torch.manual_seed(0)
    return _randomise(FIDInceptionV3(), seed=1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def features(model, images) -> torch.Tensor:
    # Computed once: a full 299x299 forward costs about a second per image on a small CPU.
    with torch.no_grad():
        return model(images)


def test_features_have_pool3_shape_and_are_deterministic(model, images, features):
    assert not model.training  # eval mode out of the box: batch norm uses its running statistics
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all()
    # The features carry the image: the two images' features differ well beyond rounding.
    assert (features[0] - features[1]).abs().max() > 1e-2 * features.abs().max()
    with torch.no_grad():
        assert torch.equal(model(images), features)


def test_rejects_images_without_three_channels(model):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))


def test_state_dict_matches_pytorch_fid_architecture():
    expected = json.loads(SHAPES_FIXTURE.read_text())
    ours = {name: list(t.shape) for name, t in FIDInceptionV3().state_dict().items()}
    assert ours == expected
    assert expected["fc.weight"] == [1008, 2048]


def test_load_round_trips_a_saved_state_dict(model, images, features, tmp_path):
    path = tmp_path / FID_WEIGHTS_NAME
    torch.save(model.state_dict(), path)
    loaded = load_fid_inception(path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    # Every tensor came from the file (the fixture randomised the batch-norm statistics, so defaults would show).
    saved = model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.state_dict().items())
    with torch.no_grad():
        assert torch.equal(loaded(images), features)


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{FID_WEIGHTS_NAME}.*pytorch-fid") as info:
        load_fid_inception(tmp_path / "nowhere.pth")
    assert "github.com/mseitzer/pytorch-fid/releases" in str(info.value)


def _neighbourhoods(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 neighbourhood of every pixel, stacked on a new first axis, NaN where it falls outside the image."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), value=math.nan)
    return torch.stack([padded[..., i : i + height, j : j + width] for i in range(3) for j in range(3)])


@pytest.mark.parametrize(
    ("make_block", "pooling"),
    [
        (lambda c: FIDInceptionA(c, pool_features=192), "avg"),  # Mixed_5b-5d
        (lambda c: FIDInceptionC(c, channels_7x7=8), "avg"),  # Mixed_6b-6e
        (lambda c: FIDInceptionE(c), "avg"),  # Mixed_7b
        (lambda c: FIDInceptionE(c, max_pool=True), "max"),  # Mixed_7c
    ],
    ids=["A", "C", "E_1", "E_2"],
)
def test_pool_branch_pools_like_tensorflow(make_block, pooling):
    # TF's 'SAME' average pool divides by the number of pixels inside the image (a corner averages 4, not 9 with 5
    # zeros), which is what torchvision's Inception gets wrong; Mixed_7c max-pools instead.
    channels = 4
    block = make_block(channels).eval()
    # Make the pool branch's conv + BN + ReLU an identity on the first `channels` outputs, to read the pool directly.
    with torch.no_grad():
        weight = block.branch_pool.conv.weight
        weight.zero_()
        weight[:channels, :, 0, 0] = torch.eye(channels)
    x = torch.rand(2, channels, 5, 6, generator=torch.Generator().manual_seed(4)) + 0.5  # positive: ReLU passes
    with torch.no_grad():
        pooled = block(x)[:, -192:][:, :channels] * math.sqrt(1 + block.branch_pool.bn.eps)

    windows = _neighbourhoods(x)
    expected = windows.nanmean(0) if pooling == "avg" else windows.nan_to_num(-math.inf).amax(0)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    # The check discriminates: zero-counting average pooling gives different borders.
    assert not torch.allclose(pooled, F.avg_pool2d(x, 3, stride=1, padding=1), atol=1e-3)
