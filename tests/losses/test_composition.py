"""The loss of several subjects in their boxes: one subject over the whole image is today's loss exactly; leakage,
presence and the crops' gradients on constructed cases; the gradient reaches the LoRA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from siso.backbones import load_backbone
from siso.config import ComposeSettings, LoraSettings, NegativeSettings, SimilaritySettings
from siso.images import pil_to_tensor
from siso.lora import add_lora, trainable
from siso.losses import CompositionLoss, SimilarityLoss, presence_term
from siso.losses.composition import box_cells
from siso.optimize import generation_render


def _photo(seed: int) -> Image.Image:
    yy, xx = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(seed)
    img = np.stack([xx * rng.uniform(2, 8), yy * rng.uniform(2, 8), 255 - xx * rng.uniform(1, 6)], -1)
    img[rng.integers(4, 12) : rng.integers(18, 28), rng.integers(4, 12) : rng.integers(18, 28)] = rng.integers(
        0, 255, 3
    )
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def single(model_dirs):
    settings = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    return SimilarityLoss.from_pretrained(settings, _photo(0), "cpu", torch.float32)


@pytest.mark.parametrize("box", [None, (0, 0, 32, 32)])
def test_one_subject_over_the_whole_image_is_the_single_subject_loss_exactly(single, box):
    composed = CompositionLoss(dict(single.nets), [_photo(0)], [box], ["dog"], single.weights)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected, got = single(images), composed(images)
    assert torch.equal(got["loss"], expected["loss"])
    assert torch.equal(got["dino"], expected["dino"]) and torch.equal(got["ir"], expected["ir"])
    assert set(got) == {"dino", "ir", "identity/dog", "loss"}  # no leakage with one subject, no presence without a box


def _pair(single, presence_weight=0.0):
    settings = ComposeSettings(presence_weight=presence_weight)
    return CompositionLoss(
        dict(single.nets), [_photo(0), _photo(1)], [(0, 0, 32, 32), (32, 0, 64, 32)], ["a", "b"], None, settings
    )


def test_leakage_penalises_a_box_that_is_the_other_subject_and_not_its_own(single):
    loss = _pair(single)
    a, b = pil_to_tensor(_photo(0)), pil_to_tensor(_photo(1))
    own = loss(torch.cat([a, b], -1))  # each box holds its own subject's photo
    assert own["leakage"].item() == 0.0
    assert own["identity/a"].item() == pytest.approx(0, abs=1e-5) and own["identity/b"].item() == pytest.approx(
        0, abs=1e-5
    )
    swapped = loss(torch.cat([b, a], -1))  # each box holds the other subject
    margin = loss.settings.leak_margin
    # Box a is photo b: cos(b, r_b) = 1, so per network the excess is 1 - cos(r_a, r_b) - m.
    expected = sum((1 - loss.alike[name][0, 1] - margin).clamp(min=0) for name in loss.nets)
    assert swapped["leakage"].item() == pytest.approx(expected.item(), rel=1e-4) and expected > 0
    assert swapped["loss"] > own["loss"]


def test_the_worst_subject_weighs_more(single):
    loss = _pair(single)
    a, noise = pil_to_tensor(_photo(0)), torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    terms = loss(torch.cat([a, noise], -1))
    identity = torch.stack([terms["identity/a"], terms["identity/b"]])
    worst = loss.settings.worst_weight
    expected = identity.mean(0) + worst * (identity.max(0).values - identity.mean(0))
    torch.testing.assert_close(terms["loss"], (expected + loss.settings.leak_weight * terms["leakage"]).mean())


def test_presence_on_a_constructed_heatmap():
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[1:3, 1:3] = True
    there = inside.float()[None]  # 1 in the box, 0 outside: nothing to pay
    assert presence_term(there, inside, 0.5).item() == 0.0
    assert presence_term(1 - there, inside, 0.5).item() == 2.0  # the subject everywhere but its box
    heat = torch.full((1, 4, 4), -0.5)
    heat[0, 1, 1], heat[0, 0, 0] = 0.8, 0.6  # one strong cell inside, one outside; negative elsewhere
    # top 25 % of the 4 inside cells = that cell; top 25 % of the 12 outside cells = 3 cells: 0.6, -0.5, -0.5
    assert presence_term(heat, inside, 0.25).item() == pytest.approx((1 - 0.8) + 0.0)
    # top 8 %: one cell of each region, 0.8 inside and 0.6 outside
    assert presence_term(heat, inside, 0.08).item() == pytest.approx((1 - 0.8) + 0.6)


def test_box_cells_map_a_box_onto_the_patch_grid():
    cells = box_cells((16, 0, 32, 16), 32, 4)  # top right quarter of a 4x4 grid
    assert cells.tolist() == [[False, False, True, True], [False, False, True, True], [False] * 4, [False] * 4]
    tiny = box_cells((9, 9, 10, 10), 32, 4)  # smaller than a cell: the cell of its centre
    assert tiny.sum() == 1 and tiny[1, 1]


def test_presence_joins_the_loss_for_a_boxed_subject(single):
    loss = CompositionLoss(dict(single.nets), [_photo(0)], [(0, 0, 16, 32)], ["dog"], single.weights)
    terms = loss(torch.rand(1, 3, 32, 32))
    assert "presence" in terms and "leakage" not in terms
    torch.testing.assert_close(terms["loss"], (terms["identity/dog"] + 0.5 * terms["presence"]).mean())


def test_the_crops_gradient_stays_in_the_boxes(single):
    loss = CompositionLoss(
        dict(single.nets),
        [_photo(0), _photo(1)],
        [(0, 0, 12, 32), (20, 0, 32, 16)],
        ["a", "b"],
        settings=ComposeSettings(presence_weight=0),
    )
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss(images)["loss"].backward()
    grad = images.grad.abs().sum((0, 1))
    assert grad[:, :12].sum() > 0 and grad[:16, 20:].sum() > 0  # each box
    assert grad[:, 12:20].sum() == 0 and grad[16:, 20:].sum() == 0  # nowhere else


def test_the_gradient_reaches_only_the_lora(model_dirs, make_config, single):
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    config = make_config("sd")
    modules = add_lora(backbone, LoraSettings())
    with torch.no_grad():  # B = 0 at first: make the LoRA non-trivial so every LoRA tensor gets a gradient
        for param in trainable(backbone.denoiser).values():
            param.normal_(0, 0.01)
    loss = CompositionLoss(dict(single.nets), [_photo(0), _photo(1)], [(0, 0, 16, 32), (16, 0, 32, 32)], ["a", "b"])
    cond = backbone.encode_prompt("a dog and a cat")
    loss(generation_render(backbone, config)(cond))["loss"].backward()
    lora = trainable(modules[backbone.denoiser_name])
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    frozen = [n for n, p in backbone.denoiser.named_parameters() if n not in lora and p.grad is not None]
    assert frozen == [] and all(p.grad is None for p in loss.parameters())


BOTH = NegativeSettings(kinds=("blur", "generic"))


@pytest.mark.parametrize("negatives", [NegativeSettings(), BOTH], ids=["no-negatives", "negatives"])
@pytest.mark.parametrize("box", [None, (0, 0, 32, 32)])
def test_one_subject_with_several_photos_is_the_single_subject_loss_exactly(single, box, negatives):
    photos, generic = [_photo(0), _photo(2)], [_photo(7), _photo(8)]
    nets = dict(single.nets)
    alone = SimilarityLoss(nets, photos, single.weights, negatives, generic)
    composed = CompositionLoss(nets, [photos], [box], ["dog"], single.weights, None, negatives, [generic])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected, got = alone(images), composed(images)
    assert set(got) == {*expected, "identity/dog"}
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_alike_is_the_mean_cosine_over_all_pairs_of_photos(single):
    loss = CompositionLoss(dict(single.nets), [[_photo(0), _photo(2)], _photo(1)], [None, None], ["a", "b"])
    for name, net in loss.nets.items():
        with torch.no_grad():
            a0, a2, b = (F.normalize(net(pil_to_tensor(_photo(seed))), dim=-1)[0] for seed in (0, 2, 1))
        expected = ((a0 * b).sum() + (a2 * b).sum()) / 2
        torch.testing.assert_close(loss.alike[name][0, 1], expected)
        torch.testing.assert_close(loss.alike[name][1, 0], expected)
        torch.testing.assert_close(loss.alike[name][1, 1], torch.tensor(1.0))


def test_each_subject_has_its_own_negatives_averaged_over_the_subjects(single):
    photos, generic = [[_photo(0), _photo(2)], [_photo(1)]], [[_photo(7), _photo(8)], [_photo(9)]]
    boxes, nets = [(0, 0, 16, 32), (16, 0, 32, 32)], dict(single.nets)
    settings = ComposeSettings(presence_weight=0)
    loss = CompositionLoss(nets, photos, boxes, ["a", "b"], single.weights, settings, BOTH, generic)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    terms = loss(images)
    alone = [
        SimilarityLoss(nets, own, single.weights, BOTH, images_k)(images[..., y0:y1, x0:x1])
        for own, images_k, (x0, y0, x1, y1) in zip(photos, generic, boxes, strict=True)
    ]
    # The crops share one network call here and not there: equal up to the batch's rounding.
    for name in ("negative/blur", "negative/generic"):
        torch.testing.assert_close(terms[name], (alone[0][name] + alone[1][name]) / 2)
    torch.testing.assert_close(terms["identity/a"], single.weights["dino"] * alone[0]["dino"] + alone[0]["ir"])
    identity = torch.stack([terms["identity/a"], terms["identity/b"]])
    base = identity.mean(0) + settings.worst_weight * (identity.max(0).values - identity.mean(0))
    base = base + settings.leak_weight * terms["leakage"]
    negatives = BOTH.blur_weight * terms["negative/blur"] + BOTH.generic_weight * terms["negative/generic"]
    assert torch.equal(terms["loss"], (base + negatives).mean())


def test_the_negatives_gradient_stays_in_the_boxes(single):
    loss = CompositionLoss(
        dict(single.nets),
        [_photo(0), _photo(1)],
        [(0, 0, 12, 32), (20, 0, 32, 16)],
        ["a", "b"],
        settings=ComposeSettings(presence_weight=0),
        negatives=BOTH,
        generic=[[_photo(7)], [_photo(8)]],
    )
    for term in ("negative/blur", "negative/generic"):
        images = torch.rand(1, 3, 32, 32, requires_grad=True)
        loss(images)[term].sum().backward()
        grad = images.grad.abs().sum((0, 1))
        assert grad[:, :12].sum() > 0 and grad[:16, 20:].sum() > 0
        assert grad[:, 12:20].sum() == 0 and grad[16:, 20:].sum() == 0


def test_presence_with_two_identical_photos_is_presence_with_one(single):
    once = CompositionLoss(dict(single.nets), [_photo(0)], [(0, 0, 16, 32)], ["dog"], single.weights)
    twice = CompositionLoss(dict(single.nets), [[_photo(0)] * 2], [(0, 0, 16, 32)], ["dog"], single.weights)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    expected, got = once(images), twice(images)
    assert all(torch.equal(got[name], expected[name]) for name in ("dino", "ir", "identity/dog"))
    # The map is a matrix product, whose rounding depends on how many photos it spans: equal to an ulp.
    torch.testing.assert_close(got["presence"], expected["presence"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["loss"], expected["loss"], rtol=0, atol=1e-6)


def test_generic_images_must_match_the_subjects(single):
    two = ([_photo(0), _photo(1)], [None, None], ["a", "b"])
    with pytest.raises(ValueError, match="2 subjects and 1 sets of generic images"):
        CompositionLoss(dict(single.nets), *two, negatives=BOTH, generic=[[_photo(7)]])
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        CompositionLoss(dict(single.nets), *two, negatives=BOTH)
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        CompositionLoss(dict(single.nets), *two, negatives=BOTH, generic=[[_photo(7)], []])
