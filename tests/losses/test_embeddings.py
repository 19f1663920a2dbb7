"""`siso.losses.embeddings`: differentiable preprocessing, and the IR network read from a CLIP checkpoint."""

import json

import pytest
import tiny
import torch
from transformers import CLIPModel

from siso.hub import ModelLoadError
from siso.losses import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ClipImageEmbedding, preprocess


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
