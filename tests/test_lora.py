"""A saved subject is a diffusers LoRA that a stock pipeline loads and that reproduces our images."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

from siso.backbones import load_backbone
from siso.lora import read_subject_info, save_lora
from siso.optimize import optimize_subject

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}


@pytest.mark.parametrize(("family", "text_encoder"), [("sd", False), ("sd", True), ("sdxl", False), ("sdxl", True)])
def test_saved_lora_reproduces_images_in_stock_pipeline(
    model_dirs, subject, make_config, tmp_path, family, text_encoder
):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    config = make_config(family, max_iters=5, patience=5, min_improvement=0.0)
    config.lora.train_text_encoder = text_encoder
    result = optimize_subject(backbone, subject, config, progress=False)
    assert result.best_iteration > 0  # a non-trivial LoRA is what gets saved
    lora_dir = save_lora(backbone, tmp_path / "lora", model="tiny")  # finds the modules that carry LoRA
    ours = backbone.generate("a dog on the beach", seed=5, num_inference_steps=2)

    with safe_open(lora_dir / "pytorch_lora_weights.safetensors", "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
        keys = list(f.keys())
    assert metadata["unet.r"] == 4 and metadata["unet.lora_alpha"] == 4
    assert any(k.startswith("text_encoder") for k in keys) == text_encoder
    assert read_subject_info(lora_dir) == {"resolution": 32, "model": "tiny"}

    stock = PIPELINES[family].from_pretrained(model_dirs[family])
    plain = stock(
        "a dog on the beach", num_inference_steps=2, guidance_scale=0.0, generator=torch.Generator().manual_seed(5)
    ).images[0]
    stock.load_lora_weights(lora_dir)
    loaded = stock(
        "a dog on the beach", num_inference_steps=2, guidance_scale=0.0, generator=torch.Generator().manual_seed(5)
    ).images[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(ours))  # the LoRA changes the image ...
    assert np.array_equal(np.asarray(loaded), np.asarray(ours))  # ... and the stock pipeline reproduces it
