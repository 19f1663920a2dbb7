"""The FLUX backbone: parity with the stock FluxPipeline, the gradient path, LoRA I/O and the CLI, on a tiny FLUX."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from console import run_siso
from diffusers import FluxPipeline
from PIL import Image
from safetensors import safe_open

from siso.backbones import FluxBackbone, load_backbone, resolve_model
from siso.config import LoraSettings, OptimSettings
from siso.lora import add_lora, save_lora
from siso.optimize import optimize_subject

PROMPT = "a photo of a dog"


@pytest.fixture(scope="module")
def flux_dirs(model_dirs, tmp_path_factory) -> dict[str, Path]:
    """The session's tiny FLUX.1-schnell plus a guidance-distilled (FLUX.1-dev-like) variant."""
    return {"flux": model_dirs["flux"], "flux-dev": tiny.make_flux_schnell(tmp_path_factory.mktemp("dev") / "d", True)}


def load(path) -> FluxBackbone:
    return load_backbone(str(path), device="cpu", resolution=32)


def stock_images(pipe: FluxPipeline, prompt: str, seed: int, steps: int, guidance: float = 0.0, output_type="pil"):
    """The stock call our sampler and `generate` must reproduce (32 px: the pipeline's own default is 256 here)."""
    return pipe(
        prompt,
        height=32,
        width=32,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=256,
        output_type=output_type,
    ).images


def test_tiny_flux_fixture(model_dirs):
    pipe = FluxPipeline.from_pretrained(model_dirs["flux"])
    t5 = pipe.tokenizer_2
    assert len(t5) == pipe.text_encoder_2.config.vocab_size  # no sentinel tokens outside the vocabulary
    ids = t5("a photo of a dog in Paris", padding="max_length", max_length=256).input_ids
    assert len(ids) == 256 and t5.unk_token_id not in ids and ids[-1] == t5.pad_token_id

    def image(prompt, prompt_2):
        return pipe(
            prompt,
            prompt_2=prompt_2,
            height=32,
            width=32,
            num_inference_steps=1,
            generator=torch.Generator().manual_seed(0),
            max_sequence_length=256,
            output_type="pt",
        ).images

    base = image(PROMPT, PROMPT)
    assert torch.isfinite(base).all() and torch.equal(base, image(PROMPT, PROMPT))
    # Both text encoders reach the image: CLIP-L (pooled) through `prompt`, T5 through `prompt_2`.
    assert not torch.equal(base, image("a cat", PROMPT))
    assert not torch.equal(base, image(PROMPT, "a cat"))


@pytest.mark.parametrize(("model", "steps", "guidance"), [("flux", 1, 0.0), ("flux", 2, 0.0), ("flux-dev", 2, 3.5)])
def test_sampler_matches_stock_pipeline(flux_dirs, model, steps, guidance):
    # 2 steps exercise the scheduler state; the dev variant feeds the guidance scale to the transformer.
    backbone = load(flux_dirs[model])
    cond = backbone.encode_prompt(PROMPT)
    ours = backbone.sample(cond, torch.Generator().manual_seed(7), steps, grad_steps=steps, guidance_scale=guidance)
    assert ours.shape == (1, 3, 32, 32)
    expected = stock_images(FluxPipeline.from_pretrained(flux_dirs[model]), PROMPT, 7, steps, guidance, "pt")
    # Same operations in the same order on CPU fp32: identical up to float rounding (measured: 0.0).
    torch.testing.assert_close(ours.detach(), expected, atol=1e-5, rtol=0)


def test_generate_matches_stock_pipeline_images(model_dirs):
    ours = load(model_dirs["flux"]).generate("a dog on the beach", seed=3, num_inference_steps=2)
    expected = stock_images(FluxPipeline.from_pretrained(model_dirs["flux"]), "a dog on the beach", 3, 2)[0]
    assert np.array_equal(np.asarray(ours), np.asarray(expected))


def test_encode_is_the_inverse_layout_of_decode(model_dirs):
    # decode(encode(x)) must be the VAE's own reconstruction: packing, shift and scale undo each other exactly.
    backbone = load(model_dirs["flux"])
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = backbone.encode(images)
    assert latents.shape == (1, 8 * 8, 16 * 4)  # 16x16x16 latents in 2x2 patches
    vae = backbone.pipe.vae
    with torch.no_grad():
        direct = vae.decode(vae.encode(images * 2 - 1).latent_dist.mean).sample / 2 + 0.5
    torch.testing.assert_close(backbone.decode(latents), direct.clamp(0, 1), atol=1e-5, rtol=0)


def test_names_resolutions_and_defaults(model_dirs):
    assert resolve_model("flux-schnell") == ("black-forest-labs/FLUX.1-schnell", FluxBackbone, 512)
    assert resolve_model(str(model_dirs["flux"]))[1] is FluxBackbone
    # A local folder defaults to the stock pipeline's size: 128 x the VAE factor (2 here).
    assert load_backbone(str(model_dirs["flux"]), device="cpu").resolution == 256
    with pytest.raises(ValueError, match="FLUX resolution must be a multiple of 4, got 34"):
        load_backbone(str(model_dirs["flux"]), device="cpu", resolution=34)
    # The family's defaults name real settings with valid values.
    OptimSettings(**FluxBackbone.defaults["optim"])
    LoraSettings(**FluxBackbone.defaults["lora"])


def test_gradients_reach_only_lora(model_dirs):
    backbone = load(model_dirs["flux"])
    modules = add_lora(backbone, LoraSettings(train_text_encoder=True))
    assert list(modules) == ["transformer", "text_encoder"]  # T5 never gets LoRA
    lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in backbone.denoiser.named_parameters() if ".lora_A." in n}
    assert len(lora_layers) == 12 + 3  # the double block's 12 targets, the single block's q/k/v
    image = backbone.sample(backbone.encode_prompt(PROMPT), torch.Generator().manual_seed(0), 2, grad_steps=1)
    image.mean().backward()
    for name, module in backbone.pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for key, param in module.named_parameters():
            assert param.requires_grad == ("lora_" in key and name in modules), f"{name}.{key}"
            assert (param.grad is not None) == param.requires_grad, f"{name}.{key}"
    for module in modules.values():  # B starts at zero, so only the B matrices have a gradient at first
        assert any(p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)


def _base_weights(pipe) -> dict[str, torch.Tensor]:
    # peft moves a wrapped layer's weights under ".base_layer"; compare them under their original names.
    return {
        f"{name}.{key.replace('.base_layer', '')}": value.detach().clone()
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for key, value in module.state_dict().items()
        if "lora_" not in key
    }


def test_base_weights_unchanged_by_optimization(model_dirs, subject, make_config):
    backbone = load(model_dirs["flux"])
    before = _base_weights(backbone.pipe)
    config = make_config("flux", max_iters=3, patience=3, min_improvement=0.0)
    config.lora.train_text_encoder = True
    config.memory.offload_text_encoders = False  # keep T5 in place, to compare its weights
    result = optimize_subject(backbone, subject, config, progress=False)
    assert len(result.history) == 3 and len({h["loss"] for h in result.history}) == 3  # the LoRA did move
    after = _base_weights(backbone.pipe)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("text_encoder", [False, True])
def test_saved_lora_reproduces_images_in_stock_pipeline(model_dirs, subject, make_config, tmp_path, text_encoder):
    backbone = load(model_dirs["flux"])
    config = make_config("flux", max_iters=4, patience=4, min_improvement=0.0)
    config.lora.train_text_encoder = text_encoder
    result = optimize_subject(backbone, subject, config, progress=False)
    assert result.best_iteration > 0  # a non-trivial LoRA is what gets saved
    lora_dir = save_lora(backbone, tmp_path / "lora", model="tiny")  # finds the modules that carry LoRA
    ours = backbone.generate("a dog on the beach", seed=5, num_inference_steps=2)

    with safe_open(lora_dir / "pytorch_lora_weights.safetensors", "pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
        keys = list(f.keys())
    assert metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 4
    assert any(k.startswith("text_encoder.") for k in keys) == text_encoder
    assert not any(k.startswith("text_encoder_2.") for k in keys)

    stock = FluxPipeline.from_pretrained(model_dirs["flux"])
    plain = stock_images(stock, "a dog on the beach", 5, 2)[0]
    stock.load_lora_weights(lora_dir)
    loaded = stock_images(stock, "a dog on the beach", 5, 2)[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(ours))  # the LoRA changes the image ...
    assert np.array_equal(np.asarray(loaded), np.asarray(ours))  # ... and the stock pipeline reproduces it


def test_console_script_end_to_end_and_reuse(model_dirs, subject_path, similarity_args, tmp_path):
    out, again = tmp_path / "run", tmp_path / "again"
    prompts = ["--prompt", "a dog on the beach", "--steps", "2", "--seed", "3"]
    proc = run_siso(
        [
            "generate",
            "--subject",
            str(subject_path),
            "--model",
            str(model_dirs["flux"]),
            *similarity_args,
            "--resolution",
            "32",
            "--train-prompt",
            PROMPT,
            "--text-encoder-lora",
            "--lr",
            "1e-2",
            "--max-iters",
            "3",
            *prompts,
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["iterations"]) == 3
    [record] = metrics["images"]
    assert Image.open(out / record["file"]).size == (32, 32)

    # Stage two: the saved subject (transformer + CLIP-L LoRA) regenerates the image without optimizing.
    proc = run_siso(["generate", "--lora", str(out / "lora"), *prompts, "--out", str(again)])
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.asarray(Image.open(out / record["file"])), np.asarray(Image.open(again / record["file"])))
