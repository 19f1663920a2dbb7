"""`siso.editing.edit`: the background loss and the edit loop on tiny models (gradient path, best iteration)."""

import numpy as np
import pytest
import torch

from siso.backbones import load_backbone
from siso.editing import BackgroundLoss, edit_subject, prepare_scene
from siso.lora import snapshot

from .helpers import _box, _edit_config


def test_background_loss_sees_only_pixels_outside_the_mask(scene_photo):
    scene = prepare_scene(scene_photo, _box(scene_photo), 32)
    loss = BackgroundLoss(scene.image, scene.background)
    assert float(loss(scene.image)) == 0
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(images).sum().backward()
    inside = (scene.mask + (1 - scene.valid)).bool().expand_as(images)
    assert (images.grad[inside] == 0).all() and (images.grad[~inside] != 0).all()
    # the mean squared error over background pixels: a constant offset of 0.1 gives 0.01
    shifted = (scene.image + 0.1 * scene.background).clamp(max=10)
    assert torch.allclose(loss(shifted), torch.tensor([0.01]))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_edit_loop(model_dirs, subject, scene_photo, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    frozen = {k: v.clone() for k, v in backbone.denoiser.state_dict().items()}
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    frames = []
    config = _edit_config(model_dirs, family, bg_weight=10.0)
    config.optim.max_iters = 8
    result = edit_subject(backbone, scene, subject, config, callback=lambda i, im, t: frames.append(im), progress=False)
    assert len(result.history) == 8 and {"dino", "ir", "similarity", "background", "loss"} <= set(result.history[0])
    for h in result.history:
        assert h["loss"] == pytest.approx(h["similarity"] + 10.0 * h["background"], rel=1e-5)
    assert result.best_loss < result.history[0]["loss"]
    # iteration 0 is the zero LoRA: the inversion's reconstruction, at the photo's size
    assert frames[0].size == (32, 24) == result.best_image.size == result.reconstruction.size
    assert np.array_equal(np.asarray(frames[0]), np.asarray(result.reconstruction))
    record = result.record()
    assert record["inversion"]["model_evaluations"] == (5 if family == "sdxl" else 3)  # DDIM: 1 per step (+2 fixes)
    assert np.isfinite(record["inversion"]["psnr"]) and np.isfinite(record["best_background_mse"])
    # only LoRA weights changed
    after = {k.replace(".base_layer", ""): v for k, v in backbone.denoiser.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_background_term_keeps_the_background(model_dirs, subject, scene_photo):
    """Without the background term the similarity alone moves the background away from the input; with c = 10 it
    moves back towards it (8 iterations, tiny SDXL)."""
    finals = {}
    for weight in (0.0, 10.0):
        backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
        scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
        config = _edit_config(model_dirs, "sdxl", bg_weight=weight)
        config.optim.max_iters = config.optim.patience = 8
        history = edit_subject(backbone, scene, subject, config, progress=False).history
        finals[weight] = history[-1]["background"]
        start = history[0]["background"]
    assert finals[10.0] < start < finals[0.0]


def test_edit_keeps_the_best_iteration_and_its_lora(model_dirs, subject, scene_photo):
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    config = _edit_config(model_dirs)
    config.optim.min_improvement, config.optim.patience, config.optim.max_iters = 0.99, 2, 6
    frames = []
    result = edit_subject(backbone, scene, subject, config, callback=lambda i, im, t: frames.append(im), progress=False)
    assert result.best_iteration == 0 and result.stop_reason == "converged" and len(frames) == 3
    assert np.array_equal(np.asarray(result.best_image), np.asarray(frames[0]))
    assert not np.array_equal(np.asarray(frames[-1]), np.asarray(frames[0]))  # the LoRA did move
    carried = snapshot({"unet": backbone.denoiser})["unet"]
    assert all(torch.equal(v, result.best_lora["unet"][k]) for k, v in carried.items())  # the backbone has it back


def test_background_target_reconstruction_is_zero_at_identity(model_dirs, subject, scene_photo):
    """Paper Eq. 3 compares with the inversion's reconstruction, which the zero LoRA reproduces: L_bg = 0 at
    iteration 0 (the reference code's target, the input, gives the inversion's error instead)."""
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    config = _edit_config(model_dirs, bg_target="reconstruction")
    config.optim.max_iters = 1
    result = edit_subject(backbone, scene, subject, config, progress=False)
    assert result.history[0]["background"] == 0.0
    assert result.best_background_mse > 0  # against the input


def test_edit_gradients_reach_only_lora_and_only_through_the_last_steps(model_dirs, scene_photo):
    """Denoising from the inverted latent: gradients reach the LoRA only, and ``grad_steps`` decides how many of the
    3 steps keep their graph (same image, different gradient)."""
    from siso.editing.inversion import invert
    from siso.lora import add_lora

    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    config = _edit_config(model_dirs, "sdxl")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    sampler = backbone.edit_sampler(4, 0.75)
    cond = backbone.encode_prompt(config.train_prompt)
    inversion = invert(sampler, backbone.encode(scene.image), cond, config.inversion, torch.Generator().manual_seed(0))
    add_lora(backbone, config.lora)
    with torch.no_grad():  # move B off zero so that every LoRA tensor gets a gradient
        for name, p in backbone.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01, generator=torch.Generator().manual_seed(1))
    grads, images = {}, {}
    for k in (1, 3):
        image = backbone.denoise(sampler, inversion.latents, inversion.noises, cond, grad_steps=k)
        image.square().mean().backward()
        named = dict(backbone.denoiser.named_parameters())
        assert all(("lora_" in n) == (p.grad is not None) for n, p in named.items())
        grads[k] = torch.cat([p.grad.flatten() for n, p in named.items() if p.grad is not None])
        images[k] = image.detach()
        backbone.denoiser.zero_grad(set_to_none=True)
    assert torch.equal(images[1], images[3]) and not torch.allclose(grads[1], grads[3])
    assert not inversion.latents.requires_grad and not backbone.pipe.vae.decoder.conv_out.weight.requires_grad
