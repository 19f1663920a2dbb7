"""Editing on the rectified-flow families (tiny FLUX.1-schnell and Sana): an edit run with the family's editing
defaults writes its run folder (`siso edit` takes Sana's 20-step schedule without --steps), gradients reach only the
LoRA, and with the LoRA at identity the inverted photo comes back as the VAE's round trip.

Strength 0 would redo no denoising step: the edit would be exactly the VAE round trip ``decode(encode(photo))``. The
settings refuse it (no step, nothing to optimize), so the zero-LoRA test measures at the smallest strength that
leaves one step (FLUX: 0.25 of 4 steps; Sana: 0.05 of 20), where only the inversion's error separates the two.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from siso.backbones import config_for, load_backbone
from siso.cli import main
from siso.compose import Subject
from siso.config import EditConfig, InversionSettings, SimilaritySettings
from siso.editing import invert_scene, prepare_scene
from siso.editing.inversion import invert
from siso.lora import add_lora
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.run import run
from siso.runs.spec import RunSpec

from .helpers import _box

# FLUX's local folder would draw at 256 px (the stock pipeline's 128 x its VAE factor); Sana's is 32 px already.
RESOLUTION = 32


def _config(model_dirs, family, **overrides) -> EditConfig:
    """The family's editing configuration (`config_for`: FLUX 4 steps; Sana 20, gradient through 3, CFG 4.5)."""
    similarity = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    optim = {"lr": 1e-2, "max_iters": 2, **overrides.pop("optim", {})}
    return config_for(
        EditConfig,
        str(model_dirs[family]),
        train_prompt="a photo of a dog",
        resolution=RESOLUTION,
        similarity=similarity,
        optim=optim,
        edit={"mask_dilation": 1, **overrides.pop("edit", {})},
        **overrides,
    )


@pytest.mark.parametrize(("family", "steps", "evaluations"), [("flux", 4, 30), ("sana", 20, 142)])
def test_edit_run_writes_its_outputs(model_dirs, subject, scene_photo, tmp_path, family, steps, evaluations):
    config = _config(model_dirs, family)
    out = tmp_path / "run"
    job = EditJob(scene_photo, _box(scene_photo), "box 40,32,80,72", subject_class="dog")
    metrics = run(RunSpec("edit", config, RunFolder(out), [Subject(subject)], job), progress=False)
    for name in ("best.png", "input.png", "mask.png", "inversion.png", "iterations.png", "loss.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert Image.open(out / "best.png").size == Image.open(out / "inversion.png").size == (32, 24)
    assert metrics["complete"] and len(metrics["iterations"]) == 2
    assert {"similarity", "background"} <= set(metrics["iterations"][0])
    # ReNoise, unregularised for a velocity: 5 + 1 passes per step below t=250 (Sana's 249 and 136), else 9 + 1.
    assert metrics["inversion"]["model_evaluations"] == evaluations and np.isfinite(metrics["inversion"]["psnr"])
    recorded = EditConfig.from_dict(json.loads((out / "config.json").read_text())["siso"])
    assert recorded.optim.num_inference_steps == steps  # the family's editing schedule, recorded
    assert recorded.inversion == InversionSettings()  # the settings as given, regularisation weights included


# ReNoise run to its fixed point: 50 renoising iterations on every step, the last one kept.
CONVERGED = InversionSettings(
    renoise_steps=50, first_step_renoise_steps=50, average=(50, 51), first_step_average=(50, 51)
)


# Measured max / mean abs pixel difference from the VAE round trip at one step (CPU fp32, 1 and 2 threads): FLUX
# 0.093 / 0.0088 with the default ReNoise, 0.018 / 0.0013 converged (tiny FLUX's fixed point converges slowly: latent
# error x0.8 per iteration); Sana 0.042 / 0.0021 default (its first step averages iterations 0-4), 4.5e-7 / 5e-8
# converged. DDIM, for scale: FLUX 0.77 / 0.10, Sana 0.13 / 0.0095.
@pytest.mark.parametrize(
    ("family", "strength", "settings", "max_error", "mean_error"),
    [
        ("flux", 0.25, InversionSettings(), 0.2, 0.02),
        ("flux", 0.25, CONVERGED, 0.04, 0.003),
        ("sana", 0.05, InversionSettings(), 0.1, 0.005),
        ("sana", 0.05, CONVERGED, 1e-5, 1e-6),
    ],
    ids=["flux-default", "flux-converged", "sana-default", "sana-converged"],
)
def test_zero_lora_edit_is_the_vae_round_trip(
    model_dirs, scene_photo, family, strength, settings, max_error, mean_error
):
    """With the LoRA at identity the edit is the inverted photo denoised back: the VAE round trip up to the
    inversion's residual, which vanishes as ReNoise's fixed point converges."""
    backbone = load_backbone(str(model_dirs[family]), device="cpu", resolution=RESOLUTION)
    config = _config(model_dirs, family, optim={"grad_steps": 1}, edit={"strength": strength}, inversion=settings)
    scene = prepare_scene(scene_photo, _box(scene_photo), RESOLUTION, 1)
    inverted = invert_scene(backbone, scene, config, progress=False)
    assert len(inverted.sampler) == 1
    with torch.no_grad():
        round_trip = backbone.decode(backbone.encode(scene.image))
    difference = (inverted.reconstruction - round_trip).abs()
    assert difference.max() < max_error and difference.mean() < mean_error, (difference.max(), difference.mean())


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_edit_gradients_reach_only_lora_through_the_last_steps(model_dirs, family):
    """Denoising from the inverted latent with the flow sampler: only the last ``grad_steps`` denoiser calls build a
    graph, and the gradient reaches the LoRA and nothing else."""
    backbone = load_backbone(str(model_dirs[family]), device="cpu", resolution=RESOLUTION)
    config = _config(model_dirs, family, inversion=InversionSettings.preset("ddim"))
    guidance = config.optim.guidance_scale
    sampler = backbone.edit_sampler(config.optim.num_inference_steps, config.edit.strength)
    cond = backbone.encode_prompt(config.train_prompt, guidance)
    photo = torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    inversion = invert(sampler, backbone.encode(photo), cond, config.inversion, torch.Generator(), guidance)
    add_lora(backbone, config.lora)
    with torch.no_grad():  # move B off zero so that every LoRA tensor gets a gradient
        for name, p in backbone.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01, generator=torch.Generator().manual_seed(1))
    calls = []
    backbone.denoiser.register_forward_hook(lambda module, args, output: calls.append(torch.is_grad_enabled()))
    image = backbone.denoise(sampler, inversion.latents, inversion.noises, cond, 2, guidance)
    assert calls == [False] * (len(sampler) - 2) + [True, True]
    image.square().mean().backward()
    for name, p in backbone.denoiser.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert not any(p.grad is not None for p in backbone.pipe.vae.parameters())


def test_cli_edit_uses_sanas_editing_schedule(model_dirs, subject, subject_path, similarity_args, tmp_path):
    """`siso edit` without --steps edits with the family's editing schedule: Sana's 20 steps (15 redone at strength
    0.75), gradient through 3, CFG 4.5; config.json records them."""
    scene = tmp_path / "scene.png"
    subject.save(scene)
    out = tmp_path / "run"
    args = ["edit", "--image", str(scene), "--subject", str(subject_path), "--model", str(model_dirs["sana"])]
    args += ["--box", "30,20,60,50", "--subject-class", "dog", "--inversion", "ddim", *similarity_args]
    assert main([*args, "--max-iters", "1", "--quiet", "--out", str(out)]) == 0
    optim = json.loads((out / "config.json").read_text())["siso"]["optim"]
    assert (optim["num_inference_steps"], optim["grad_steps"], optim["guidance_scale"]) == (20, 3, 4.5)
    assert json.loads((out / "metrics.json").read_text())["inversion"]["model_evaluations"] == 15  # DDIM: 1 a step
