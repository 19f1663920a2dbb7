"""The paper's IR network (GUIE first place) read natively from a checkpoint in its layout, against an independent
open_clip-style forward built here from ``nn.MultiheadAttention``."""

import copy
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn

from siso.cli import main
from siso.config import SimilaritySettings
from siso.eval.metrics import build_metrics
from siso.hub import ModelLoadError
from siso.images import pil_to_tensor
from siso.losses import (
    CLIP_MEAN,
    CLIP_STD,
    SIMILARITY_NETS,
    GuieEmbedding,
    GuieNet,
    SimilarityLoss,
    describe_ir,
    preprocess,
)

SIDE = 290  # the real checkpoint's input side, grid (24 x 24) and stride (12); only the tower is narrow and shallow


class Block(nn.Module):
    def __init__(self, width, heads, mlp_width):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(mlp_width, width))
        )

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads, mlp_width):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads, mlp_width) for _ in range(layers))


class Visual(nn.Module):
    """open_clip's VisionTransformer, with the fork's stride-12 patch convolution."""

    def __init__(self, width, layers, heads, mlp_width, grid, embed_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 14, stride=(290 - 14) // (grid - 1), bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed_dim))

    def forward(self, pixels):
        x = self.conv1(pixels).reshape(len(pixels), self.conv1.out_channels, -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(len(x), 1, x.shape[-1])
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


class CosFace(nn.Module):  # the training head, saved in the checkpoint, unused at inference
    def __init__(self, embed, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, embed))


class Reference(nn.Module):
    """The reference code's ``add_layer_model``: ``fc1(backbone(x))``."""

    def __init__(self, width=160, layers=2, heads=2, mlp_width=64, grid=24, embed_dim=16, out_dim=8, classes=10):
        super().__init__()
        self.backbone = Visual(width, layers, heads, mlp_width, grid, embed_dim)
        self.fc1 = nn.Linear(embed_dim, out_dim)
        self.fc2 = CosFace(out_dim, classes)

    def forward(self, pixels):
        return self.fc1(self.backbone(pixels))


class NotATensor:
    pass


@pytest.fixture(scope="module")
def reference() -> Reference:
    torch.manual_seed(0)
    model = Reference().eval()
    with torch.no_grad():
        for param in model.parameters():  # non-trivial everywhere (LayerNorm too), scaled to keep activations sane
            param.copy_(torch.randn_like(param) * 0.2)
    return model


def _save(reference, path, prefix="module.backbone.", head="module.", wrap=None):
    state = {}
    for key, tensor in reference.state_dict().items():
        name = key.removeprefix("backbone.")
        state[(prefix + name) if key.startswith("backbone.") else (head + key)] = tensor
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def guie_file(reference, tmp_path_factory):
    return _save(reference, tmp_path_factory.mktemp("guie") / "ir_features.pth")


@pytest.mark.parametrize(
    "prefix, head, wrap",
    [("module.backbone.", "module.", None), ("backbone.", "", "state_dict"), ("visual.", "", None), ("", "", "model")],
)
def test_network_matches_an_open_clip_style_forward(reference, tmp_path, prefix, head, wrap):
    path = _save(reference, tmp_path / "ir.pth", prefix, head, wrap)
    embed = GuieEmbedding.from_pretrained(str(path), None, "cpu", torch.float64)
    assert embed.resolution == SIDE and embed.net.visual.conv1.stride == (12, 12)
    pixels = torch.randn(2, 3, SIDE, SIDE, dtype=torch.float64)
    with torch.no_grad():
        expected = copy.deepcopy(reference).double()(pixels)
    torch.testing.assert_close(embed.net(pixels), expected)


def test_preprocessing_is_the_reference_codes(reference, guie_file):
    # Short side to the net's side (bicubic), centre crop, CLIP statistics: here through PIL, independently.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2))
    width = round(512 * SIDE / 384)
    left = (width - SIDE) // 2
    resized = image.resize((width, SIDE), Image.Resampling.BICUBIC).crop((left, 0, left + SIDE, SIDE))
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    ours = preprocess(pil_to_tensor(image), SIDE, CLIP_MEAN, CLIP_STD)
    assert (ours - pixels).abs().max() < 0.05  # PIL rounds to 8 bits: 1/255/0.26 = 0.015 per step
    embed = GuieEmbedding.from_pretrained(str(guie_file), None, "cpu", torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(embed(pil_to_tensor(image)), reference(ours))
        assert embed(pil_to_tensor(image)).shape == (1, 8)


def test_gradient_reaches_the_image_and_not_the_weights(guie_file):
    embed = GuieEmbedding.from_pretrained(str(guie_file), None, "cpu", torch.float32)
    images = torch.rand(2, 3, 48, 64, requires_grad=True)
    embed(images).square().sum().backward()
    assert images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in embed.parameters())


def test_the_real_checkpoints_shapes_give_vit_h_at_290_px():
    with torch.device("meta"):  # shapes only: the real ViT-H/14 tower, fc1 1024 -> 64, a 10000-class head
        state = Reference(1280, 32, 16, 5120, 24, 1024, 64, 10000).state_dict()
    net = GuieNet.from_state_dict(state, "ir_features.pth")
    assert net.image_size == 290 and len(net.visual.positional_embedding) == 577
    assert net.visual.conv1.stride == (12, 12) and net.visual.conv1.kernel_size == (14, 14)
    assert len(net.visual.transformer["resblocks"]) == 32 and net.visual.transformer["resblocks"][0].attn.heads == 16
    assert net.fc1.out_features == 64


def _one_line_error(path, match, resolution=None):
    with pytest.raises(ModelLoadError, match=match) as err:
        GuieEmbedding.from_pretrained(str(path), resolution, "cpu", torch.float32)
    assert "\n" not in str(err.value)


def test_files_that_are_not_the_guie_checkpoint_are_one_line_errors(reference, guie_file, tmp_path):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    _one_line_error(tmp_path / "notes.pth", "not a file of tensors that torch.load")
    torch.save({"fc1.weight": NotATensor()}, tmp_path / "pickle.pth")
    _one_line_error(tmp_path / "pickle.pth", "torch.load.* reads .it holds Python objects besides tensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    _one_line_error(tmp_path / "list.pth", "holds a list that is not a dict of tensors")
    torch.save({"encoder.weight": torch.zeros(2), "head.bias": torch.zeros(2)}, tmp_path / "other.pth")
    _one_line_error(tmp_path / "other.pth", "is not the GUIE model: no single open_clip tower")
    state = torch.load(guie_file, weights_only=True)
    del state["module.backbone.transformer.resblocks.1.ln_2.bias"]
    torch.save(state, tmp_path / "missing.pth")
    _one_line_error(tmp_path / "missing.pth", "resblocks.1.ln_2.bias' is missing")
    state = torch.load(guie_file, weights_only=True)
    state["module.backbone.proj"] = torch.zeros(160, 12)
    torch.save(state, tmp_path / "shapes.pth")
    _one_line_error(tmp_path / "shapes.pth", "'fc1.weight' is missing, unexpected or of another shape")
    _one_line_error(guie_file, "takes 290 px inputs .* not an IR resolution of 224", resolution=224)
    state = torch.load(guie_file, weights_only=True)
    state["module.backbone.positional_embedding"] = torch.zeros(401, 160)  # open_clip's stride 14 at 290 px: 20 x 20
    torch.save(state, tmp_path / "grid.pth")
    _one_line_error(tmp_path / "grid.pth", "a 20 x 20 grid of 14 px patches has no whole stride at 290 px")
    _one_line_error(tmp_path / "absent.pth", "file .*absent.pth does not exist")


def test_registry_loads_a_guie_file_and_the_clip_stand_in(guie_file, model_dirs):
    net = SIMILARITY_NETS["ir"](str(guie_file), None, "cpu", torch.float32)
    assert isinstance(net, GuieEmbedding) and net.resolution == SIDE
    assert net(torch.rand(2, 3, 40, 40)).shape == (2, 8)
    assert not isinstance(SIMILARITY_NETS["ir"](str(model_dirs["clip"]), None, "cpu", torch.float32), GuieEmbedding)


def test_similarity_loss_with_the_guie_file(guie_file, model_dirs, subject):
    settings = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(guie_file))
    loss_fn = SimilarityLoss.from_pretrained(settings, subject, "cpu", torch.float32)
    assert isinstance(loss_fn.nets["ir"], GuieEmbedding)
    assert loss_fn(pil_to_tensor(subject))["ir"].item() == pytest.approx(0.0, abs=1e-5)
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    terms = loss_fn(images)
    assert terms["ir"].item() > 0
    terms["ir"].sum().backward()
    assert images.grad.abs().sum() > 0


def test_ir_metric_loads_the_guie_file(guie_file):
    metric = build_metrics(["ir"], {"ir": str(guie_file)}, "cpu")["ir"]
    assert isinstance(metric.embed, GuieEmbedding) and metric.embed.resolution == SIDE


def test_describe_ir(guie_file):
    assert describe_ir(str(guie_file)).startswith("GUIE first-place model (Google Universal Image Embedding")
    assert str(guie_file) in describe_ir(str(guie_file))
    assert describe_ir("laion/CLIP-ViT-H-14-laion2B-s32B-b79K") == (
        "CLIP image embedding of laion/CLIP-ViT-H-14-laion2B-s32B-b79K, a substitute for the paper's GUIE model"
    )


def test_generate_with_the_guie_file_names_it_and_says_no_substitute(guie_file, model_dirs, subject_path, tmp_path):
    out = tmp_path / "run"
    argv = [
        "generate",
        "--subject",
        str(subject_path),
        "--prompt",
        "a photo of a dog",
        "--model",
        str(model_dirs["sd"]),
    ]
    argv += ["--dino-model", str(model_dirs["dino"]), "--dino-resolution", "28", "--ir-model", str(guie_file)]
    assert main([*argv, "--max-iters", "1", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    note = json.loads((out / "metrics.json").read_text())["ir_model_note"]
    assert (
        config["ir_network"]
        == f"GUIE first-place model (Google Universal Image Embedding, the paper's IR network) from {guie_file}"
    )
    assert "GUIE first-place model" in note and "substitute" not in note + config["ir_network"]


def test_a_missing_guie_file_is_refused_before_anything_loads(capsys, subject_path, tmp_path):
    # An unloadable model: had anything loaded before the check, its error would be the one reported.
    argv = ["generate", "--subject", str(subject_path), "--prompt", "x", "--model", str(tmp_path / "no-model")]
    assert main([*argv, "--ir-model", str(tmp_path / "ir_features.pth"), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"siso: error: --ir-model: the GUIE checkpoint file {tmp_path / 'ir_features.pth'} does not exist"]
    assert not (tmp_path / "run").exists()
