"""Similarity loss: registry, differentiable preprocessing, reference features computed once."""

import json

import pytest
import tiny
import torch
from transformers import CLIPModel

from siso.config import SimilaritySettings
from siso.hub import ModelLoadError
from siso.images import pil_to_tensor
from siso.losses import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIMILARITY_NETS,
    ClipImageEmbedding,
    SimilarityLoss,
    preprocess,
)


def test_preprocess_resizes_short_side_and_centre_crops():
    images = torch.rand(2, 3, 40, 80, requires_grad=True)
    out = preprocess(images, 20, IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (2, 3, 20, 20)
    out.sum().backward()
    assert images.grad is not None and images.grad[..., :, :15].abs().sum() == 0  # left quarter is cropped away
    assert images.grad[..., :, 30:50].abs().sum() > 0


def test_preprocess_normalises():
    grey = torch.full((1, 3, 16, 16), 0.5)
    out = preprocess(grey, 16, IMAGENET_MEAN, IMAGENET_STD)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 8, 8], expected)


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


@pytest.mark.parametrize("nested", ["missing", "contradicting"])
def test_ir_model_from_a_full_clip_takes_the_top_level_projection_dim(tmp_path, nested):
    # As laion/CLIP-ViT-H-14-laion2B-s32B-b79K: the top-level projection_dim is what visual_projection has, the
    # nested vision_config (written by an older transformers) lacks it or says otherwise.
    folder = tiny.make_clip(tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    assert config["projection_dim"] == 16
    if nested == "missing":
        del config["vision_config"]["projection_dim"]  # transformers' default is then 512
    else:
        config["vision_config"]["projection_dim"] = 24
    (folder / "config.json").write_text(json.dumps(config))
    net = ClipImageEmbedding.from_pretrained(str(folder), None, "cpu", torch.float32)
    images = torch.rand(2, 3, 28, 28)
    embeds = net(images)
    assert embeds.shape == (2, 16)
    full = CLIPModel.from_pretrained(folder).eval()  # the whole checkpoint, weights loaded: the reference
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=preprocess(images, 28, CLIP_MEAN, CLIP_STD))
    torch.testing.assert_close(embeds, expected.pooler_output)  # transformers 5: the projected embedding


def test_ir_model_from_a_vision_only_folder(model_dirs):
    net = ClipImageEmbedding.from_pretrained(str(model_dirs["clip"]), None, "cpu", torch.float32)
    assert net(torch.rand(1, 3, 28, 28)).shape == (1, 16)


def test_ir_model_of_another_architecture_is_a_clear_error(model_dirs):
    with pytest.raises(ModelLoadError, match="is a dinov2 model, not CLIP"):
        ClipImageEmbedding.from_pretrained(str(model_dirs["dino"]), None, "cpu", torch.float32)


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
