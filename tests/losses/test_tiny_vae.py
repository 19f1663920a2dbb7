"""The opt-in fast loss (`siso.losses.tiny_vae`, ``--fast``): a tiny VAE decodes for the loss, labelled as such."""

import json

import pytest
import tiny
import torch

from siso.backbones import load_backbone
from siso.backbones.sana import SanaBackbone
from siso.backbones.unet import SDXLBackbone
from siso.cli import main
from siso.config import FAST_DINO_RESOLUTION, EditConfig, FastSettings, SimilaritySettings, SisoConfig
from siso.hub import ModelLoadError
from siso.images import tensor_to_pil
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name
from siso.optimize import optimize_subject


@pytest.fixture(scope="module")
def tiny_vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd")
    return {"taesd": tiny.make_tiny_vae(root / "taesd"), "taef1": tiny.make_tiny_vae(root / "taef1", 16)}


def test_fast_is_a_recorded_different_loss():
    config = SisoConfig(fast=FastSettings(enabled=True))
    assert config.similarity.dino_resolution == FAST_DINO_RESOLUTION == 224  # instead of dinov2-large's 518
    assert SisoConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["fast"] == {"enabled": True, "tiny_vae": None}
    given = SisoConfig(fast=FastSettings(enabled=True), similarity=SimilaritySettings(dino_resolution=336))
    assert given.similarity.dino_resolution == 336  # an explicit resolution wins
    assert SisoConfig().similarity.dino_resolution is None  # off: the paper's loss, untouched
    with pytest.raises(ValueError, match="fast loss is for generation only"):
        EditConfig(fast=FastSettings(enabled=True))


def test_each_family_names_its_tiny_vae():
    fast = FastSettings(enabled=True)
    assert tiny_vae_name(fast, "sd-turbo") == "madebyollin/taesd"
    assert tiny_vae_name(fast, SDXLBackbone) == "madebyollin/taesdxl"
    assert tiny_vae_name(fast, "flux-schnell") == "madebyollin/taef1"
    with pytest.raises(ValueError, match="SanaBackbone has no known one; pass one with --tiny-vae"):
        tiny_vae_name(fast, SanaBackbone)
    assert tiny_vae_name(FastSettings(True, "my/taesana"), SanaBackbone) == "my/taesana"


def test_a_tiny_vae_of_other_latents_is_refused(model_dirs, tiny_vaes, tmp_path):
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    with pytest.raises(ModelLoadError, match="decodes 16-channel latents; this backbone's have 4"):
        load_tiny_vae(str(tiny_vaes["taef1"]), backbone)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tiny_vae(str(tmp_path / "missing"), backbone)
    vae = load_tiny_vae(str(tiny_vaes["taesd"]), backbone)
    assert not any(p.requires_grad for p in vae.parameters()) and not vae.training


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_fast_scores_tiny_decodes_and_keeps_the_full_vae_for_the_best_image(
    family, model_dirs, tiny_vaes, subject, make_config
):
    backbone = load_backbone(str(model_dirs[family]), device="cpu", resolution=32)
    stock = backbone.pipe.vae
    config = make_config(family, max_iters=3, patience=3, min_improvement=0.0)
    config.fast = FastSettings(True, str(tiny_vaes["taesd" if family == "sd" else "taef1"]))
    config.__post_init__()
    decoders = []

    def frame(iteration, image, terms):
        decoders.append(type(backbone.pipe.vae).__name__)

    result = optimize_subject(backbone, subject, config, callback=frame, progress=False)
    assert decoders == ["AutoencoderTiny"] * 3  # every scored frame came from the tiny decoder
    assert backbone.pipe.vae is stock and backbone.pipe.config.vae[1] == "AutoencoderKL"  # the full VAE is back
    opt = config.optim
    with torch.no_grad():  # the best LoRA (restored) through the full VAE draws the returned best image
        cond = backbone.encode_prompt(config.train_prompt, opt.guidance_scale)
        image = backbone.sample(cond, torch.Generator().manual_seed(opt.seed), 1, 1, opt.guidance_scale)
    assert tensor_to_pil(image)[0].tobytes() == result.best_image.tobytes()


def test_cli_fast_records_the_loss_it_ran(model_dirs, tiny_vaes, similarity_args, subject_path, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "--model", str(model_dirs["sd"]), "--subject", str(subject_path), "--prompt", "a dog"]
    args += [*similarity_args[:4], "--max-iters", "2", "--quiet", "--device", "cpu"]
    assert main([*args, "--out", str(out), "--fast", "--tiny-vae", str(tiny_vaes["taesd"])]) == 0
    recorded = json.loads((out / "config.json").read_text())["siso"]
    assert recorded["fast"] == {"enabled": True, "tiny_vae": str(tiny_vaes["taesd"])}
    assert recorded["similarity"]["dino_resolution"] == 224
    assert len(list((out / "images").iterdir())) == 1 and (out / "best.png").is_file()
    capsys.readouterr()
    # Refused in one line, before anything loads.
    for extra, message in [
        (["--model", str(model_dirs["sana"]), "--fast"], "has no known one; pass one with --tiny-vae"),
        (["--tiny-vae", "x"], "--tiny-vae needs --fast"),
    ]:
        assert main([*args, "--out", str(tmp_path / "refused"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    reuse = ["generate", "--lora", str(out / "lora"), "--prompt", "a dog", "--out", str(tmp_path / "r"), "--fast"]
    assert main(reuse) == 2
    assert "with --lora nothing is optimized" in capsys.readouterr().err


def test_help_says_fast_is_another_loss(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "NOT the paper's loss" in " ".join(capsys.readouterr().out.split())
