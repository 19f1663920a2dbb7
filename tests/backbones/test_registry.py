"""`generate` draws the stock pipelines' images and only the last steps keep a graph; model names resolve or fail
clearly, and the device is checked before anything loads."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from siso.backbones import BACKBONES, SDBackbone, SDXLBackbone, check_can_edit, config_for, load_backbone, resolve_model
from siso.config import EditConfig, SisoConfig
from siso.devices import check_device
from siso.hub import ModelLoadError

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
PROMPT = "a photo of a dog"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_generate_matches_stock_pipeline_images(model_dirs, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    ours = backbone.generate(PROMPT, seed=3, num_inference_steps=2)
    stock = PIPELINES[family].from_pretrained(model_dirs[family])
    expected = stock(PROMPT, num_inference_steps=2, guidance_scale=0.0, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(ours), np.asarray(expected.images[0]))


@pytest.mark.parametrize(("family", "resolution"), [("sd", None), ("flux", 32)])
def test_grad_only_through_last_steps(model_dirs, family, resolution):
    backbone = load_backbone(str(model_dirs[family]), device="cpu", resolution=resolution)
    backbone.denoiser.requires_grad_(True)  # only to observe which denoiser calls are recorded
    calls = []
    backbone.denoiser.register_forward_hook(lambda m, args, out: calls.append(torch.is_grad_enabled()))
    backbone.sample(backbone.encode_prompt(PROMPT), torch.Generator().manual_seed(0), 3, grad_steps=1)
    assert calls == [False, False, True]


def test_resolve_model_names_and_families(model_dirs):
    assert resolve_model("sdxl-turbo") == ("stabilityai/sdxl-turbo", SDXLBackbone, 512)
    assert resolve_model("sd-turbo")[1] is SDBackbone
    assert resolve_model(str(model_dirs["sdxl"]))[1] is SDXLBackbone
    assert resolve_model(str(model_dirs["sd"]))[1] is SDBackbone


def test_every_family_edits_with_its_own_editing_schedule():
    """FLUX.1-schnell edits with editing's 4 steps; Sana, no few-step model, with its 20 (15 redone at strength 0.75),
    its gradient steps and guidance; a flag left out (None) keeps the family's, a given one wins. Generation never
    sees the editing entry."""
    for name in BACKBONES:
        check_can_edit(name)
    steps = {name: config_for(EditConfig, name).optim.num_inference_steps for name in BACKBONES}
    assert steps == {"sdxl-turbo": 4, "sd-turbo": 4, "flux-schnell": 4, "sana": 20}
    sana = config_for(EditConfig, "sana", optim={"num_inference_steps": None})
    assert (sana.optim.num_inference_steps, sana.optim.grad_steps, sana.optim.guidance_scale) == (20, 3, 4.5)
    assert config_for(EditConfig, "sana", optim={"num_inference_steps": 8}).optim.num_inference_steps == 8
    generation = {name: config_for(SisoConfig, name).optim.num_inference_steps for name in ("flux-schnell", "sana")}
    assert generation == {"flux-schnell": 1, "sana": 20}


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match="unknown model 'sd-trubo'.*sdxl-turbo, sd-turbo"):
        resolve_model("sd-trubo")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve_model(str(tmp_path / "nope"))


def test_unsupported_pipeline_directory(model_dirs):
    with pytest.raises(ModelLoadError, match="no model_index.json|cannot load"):
        resolve_model(str(model_dirs["dino"]))


def test_uncached_hub_id_offline_says_how_to_fix():
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache.*hf download"):
        load_backbone("stabilityai/sd-turbo-not-cached", device="cpu")


def test_check_device_on_this_machine():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device 'banana' is not a torch device; usable here: cpu"):
        check_device("banana")
    with pytest.raises(ValueError, match="device 'meta' cannot be used"):
        check_device("meta")


def test_check_device_counts_gpus(monkeypatch):
    # What a CUDA build on a one-GPU machine reports.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert check_device("cuda") == "cuda" and check_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match=r"device 'cuda:7' cannot be used \(1 CUDA GPU\(s\) visible\).*cpu, cuda:0"):
        check_device("cuda:7")


def test_check_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match=r"device 'cuda' cannot be used \(torch .* is built without CUDA\)"):
        check_device("cuda")


def test_load_backbone_checks_the_device_before_loading():
    with pytest.raises(ValueError, match="device 'banana' is not a torch device"):
        load_backbone("/nonexistent/model", device="banana")
