"""Negative targets (SFO): the blur and generic terms against hand computations, their weights in the total, the
gradient through each, and nothing changed when they are off."""

import pytest
import torch
import torch.nn.functional as F
from PIL import ImageFilter

from siso.config import NegativeSettings, SimilaritySettings
from siso.images import pil_to_tensor
from siso.losses import SimilarityLoss, load_nets

from .helpers import GENERIC, PHOTOS, _images

WEIGHTS = {"dino": 2.0, "ir": 0.5}


@pytest.fixture(scope="module")
def nets(model_dirs):
    settings = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    return load_nets(settings, "cpu", torch.float32)[0]


@torch.no_grad()
def _embed(net, photos) -> torch.Tensor:
    """(P, D) unit embeddings, each photo on its own (the reference the terms are checked against)."""
    return torch.cat([F.normalize(net(pil_to_tensor(photo)), dim=-1) for photo in photos])


@torch.no_grad()
def _hand(nets, images, settings):
    """The negative terms computed from the formulas of `NegativeSettings`, with the networks called directly."""
    blur, generic = 0, 0
    for name, net in nets.items():
        x = F.normalize(net(images), dim=-1)  # (B, D)
        s = (x @ _embed(net, PHOTOS).T).mean(-1)  # (B,): the mean cosine over the photos
        blurred = [photo.filter(ImageFilter.GaussianBlur(settings.blur_radius)) for photo in PHOTOS]
        s_blur = (x @ _embed(net, blurred).T).mean(-1)
        blur = blur + WEIGHTS[name] * -F.logsigmoid(settings.beta * (s - s_blur))
        logits = torch.cat([s[:, None], x @ _embed(net, GENERIC).T], -1) / settings.temperature
        target = torch.zeros(len(x), dtype=torch.long)
        generic = generic + WEIGHTS[name] * F.cross_entropy(logits, target, reduction="none")
    return blur, generic


def test_the_blur_and_generic_terms_match_hand_computations(nets):
    settings = NegativeSettings(kinds=("blur", "generic"))
    loss = SimilarityLoss(nets, PHOTOS, WEIGHTS, settings, GENERIC)
    images = _images()
    terms = loss(images)
    blur, generic = _hand(nets, images, settings)
    assert terms["negative/blur"].shape == terms["negative/generic"].shape == (2,)
    torch.testing.assert_close(terms["negative/blur"], blur)
    torch.testing.assert_close(terms["negative/generic"], generic)
    assert (blur > 0).all() and (generic > 0).all()


def test_the_weights_enter_the_loss_as_documented(nets):
    settings = NegativeSettings(kinds=("blur", "generic"), blur_weight=0.3, generic_weight=0.7, beta=4.0)
    terms = SimilarityLoss(nets, PHOTOS, WEIGHTS, settings, GENERIC)(_images())
    assert set(terms) == {"dino", "ir", "negative/blur", "negative/generic", "loss"}
    assert all(name.startswith("negative") for name in terms if name not in ("dino", "ir", "loss"))
    identity = 2.0 * terms["dino"] + 0.5 * terms["ir"]
    negatives = 0.3 * terms["negative/blur"] + 0.7 * terms["negative/generic"]
    assert torch.equal(terms["loss"], (identity + negatives).mean())


@pytest.mark.parametrize("kind", ["blur", "generic"])
def test_one_kind_alone(nets, kind):
    settings = NegativeSettings(kinds=(kind,))
    terms = SimilarityLoss(nets, PHOTOS, WEIGHTS, settings, GENERIC)(_images())
    assert set(terms) == {"dino", "ir", f"negative/{kind}", "loss"}
    blur, generic = _hand(nets, _images(), settings)
    torch.testing.assert_close(terms[f"negative/{kind}"], blur if kind == "blur" else generic)
    weight = settings.blur_weight if kind == "blur" else settings.generic_weight
    expected = 2.0 * terms["dino"] + 0.5 * terms["ir"] + weight * terms[f"negative/{kind}"]
    assert torch.equal(terms["loss"], expected.mean())


@pytest.mark.parametrize("term", ["dino", "ir", "negative/blur", "negative/generic"])
def test_the_gradient_reaches_the_image_through_every_term(nets, term):
    loss = SimilarityLoss(nets, PHOTOS, WEIGHTS, NegativeSettings(kinds=("blur", "generic")), GENERIC)
    images = _images(requires_grad=True)
    loss(images)[term].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())  # the networks stay frozen


def test_no_kind_is_the_loss_without_negatives_exactly(nets):
    plain = SimilarityLoss(nets, PHOTOS, WEIGHTS)
    off = SimilarityLoss(nets, PHOTOS, WEIGHTS, NegativeSettings(), GENERIC)  # generic images given, unused
    expected, got = plain(_images()), off(_images())
    assert set(got) == set(expected) == {"dino", "ir", "loss"}
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_the_generic_negative_without_images_is_a_clear_error(nets):
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        SimilarityLoss(nets, PHOTOS, WEIGHTS, NegativeSettings(kinds=("generic",)))
    loss = SimilarityLoss(nets, PHOTOS, WEIGHTS, NegativeSettings(kinds=("generic",)), GENERIC)
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        loss.set_subject(PHOTOS)  # a new subject needs its own generic images


def test_the_negative_targets_are_embedded_once(nets):
    loss = SimilarityLoss(nets, PHOTOS, WEIGHTS, NegativeSettings(kinds=("blur", "generic")), GENERIC)
    calls = []
    loss.nets["dino"].register_forward_hook(lambda *a: calls.append(1))
    loss(_images())
    loss(_images())
    assert len(calls) == 2  # one per generated batch: no photo, blurred photo or generic image is embedded again
