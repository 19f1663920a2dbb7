"""Similarity loss: registry, reference features computed once, weights and gradient, several photos."""

import pytest
import torch

from siso.config import SimilaritySettings
from siso.hub import ModelLoadError
from siso.images import pil_to_tensor
from siso.losses import SIMILARITY_NETS, SimilarityLoss


def _settings(model_dirs, **kw):
    return SimilaritySettings(**{"dino_model": str(model_dirs["dino"]), "ir_model": str(model_dirs["clip"]), **kw})


def test_registry_entries_share_one_signature(model_dirs):
    for name, model in (("dino", model_dirs["dino"]), ("ir", model_dirs["clip"])):
        net = SIMILARITY_NETS[name](str(model), None, "cpu", torch.float32)
        assert net.resolution == 28  # from the model's config
        assert net(torch.rand(2, 3, 32, 32)).shape[0] == 2
    assert SIMILARITY_NETS["dino"](str(model_dirs["dino"]), 56, "cpu", torch.float32).resolution == 56


def test_loss_is_zero_for_the_subject_and_positive_otherwise(model_dirs, subject):
    loss_fn = SimilarityLoss.from_pretrained(_settings(model_dirs), subject, "cpu", torch.float32)
    same = loss_fn(pil_to_tensor(subject))
    assert same["loss"].item() == pytest.approx(0.0, abs=1e-5)
    other = loss_fn(torch.rand(1, 3, 32, 32))
    assert other["loss"] > 0.0
    torch.testing.assert_close(other["loss"], other["dino"].mean() + other["ir"].mean())


def test_loss_weights_and_gradient(model_dirs, subject):
    loss_fn = SimilarityLoss.from_pretrained(
        _settings(model_dirs, dino_weight=2.0, ir_weight=0.0), subject, "cpu", torch.float32
    )
    assert set(loss_fn.nets) == {"dino"}  # a zero-weight network is not even loaded
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    terms = loss_fn(images)
    torch.testing.assert_close(terms["loss"], 2.0 * terms["dino"].mean())
    terms["loss"].backward()
    assert images.grad.abs().sum() > 0


def test_reference_embedding_is_computed_once(model_dirs, subject):
    loss_fn = SimilarityLoss.from_pretrained(_settings(model_dirs), subject, "cpu", torch.float32)
    calls = []
    loss_fn.nets["dino"].register_forward_hook(lambda *a: calls.append(1))
    loss_fn(torch.rand(1, 3, 32, 32))
    loss_fn(torch.rand(1, 3, 32, 32))
    assert len(calls) == 2  # one per generated image, none for the subject


def test_missing_similarity_model_directory_is_a_clear_error(model_dirs, subject, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="DINO similarity model"):
        SimilarityLoss.from_pretrained(
            _settings(model_dirs, dino_model=str(tmp_path / "empty")), subject, "cpu", torch.float32
        )
    with pytest.raises(ModelLoadError, match="IR similarity model 'nobody/no-such-clip'.*not in the local"):
        SimilarityLoss.from_pretrained(
            _settings(model_dirs, ir_model="nobody/no-such-clip"), subject, "cpu", torch.float32
        )


def test_settings_validation():
    with pytest.raises(ValueError, match="at least one"):
        SimilaritySettings(dino_weight=0, ir_weight=0)
    with pytest.raises(ValueError, match="dino_resolution"):
        SimilaritySettings(dino_resolution=4)


def test_one_photo_is_the_product_and_sum_cosine_exactly(model_dirs, subject):
    loss_fn = SimilarityLoss.from_pretrained(_settings(model_dirs), subject, "cpu", torch.float32)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    terms = loss_fn(images)
    normalize = torch.nn.functional.normalize
    with torch.no_grad():
        for name, net in loss_fn.nets.items():
            reference = normalize(net(pil_to_tensor(subject)), dim=-1)
            assert torch.equal(terms[name], 1 - (normalize(net(images), dim=-1) * reference).sum(-1))
    in_a_list = SimilarityLoss(dict(loss_fn.nets), [subject], loss_fn.weights)(images)
    assert all(torch.equal(in_a_list[name], terms[name]) for name in terms)


def test_several_photos_take_the_mean_of_the_single_photo_cosines(model_dirs, subject):
    other = subject.rotate(90, expand=True).crop((0, 10, 72, 90))  # another view, of another size
    both = SimilarityLoss.from_pretrained(_settings(model_dirs), [subject, other], "cpu", torch.float32)
    assert both.references["dino"].shape[0] == 2
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = both(images)
    one = SimilarityLoss(dict(both.nets), subject, both.weights)(images)
    two = SimilarityLoss(dict(both.nets), other, both.weights)(images)
    for name in ("dino", "ir"):
        torch.testing.assert_close(got[name], (one[name] + two[name]) / 2)  # 1 - mean cos = mean (1 - cos)
    torch.testing.assert_close(got["loss"], got["dino"].mean() + got["ir"].mean())


def test_two_identical_photos_are_one_photo(model_dirs, subject):
    once = SimilarityLoss.from_pretrained(_settings(model_dirs), subject, "cpu", torch.float32)
    twice = SimilarityLoss(dict(once.nets), [subject, subject], once.weights)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected, got = once(images), twice(images)
    assert all(torch.equal(got[name], expected[name]) for name in expected)  # (c + c) / 2 is c exactly


def test_a_subject_without_photos_is_a_clear_error(model_dirs, subject):
    loss_fn = SimilarityLoss.from_pretrained(_settings(model_dirs), subject, "cpu", torch.float32)
    with pytest.raises(ValueError, match="at least one photo"):
        loss_fn.set_subject([])
