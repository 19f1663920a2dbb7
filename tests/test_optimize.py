"""The SISO loop: gradient path, loss falls, best snapshot, early stopping, stop conditions."""

import functools
import math

import numpy as np
import pytest
import torch
from diffusers import ModelMixin

from siso.backbones import load_backbone
from siso.config import LoraSettings, MemorySettings
from siso.lora import add_lora, restore, snapshot
from siso.losses import SimilarityLoss
from siso.optimize import EarlyStopping, generation_render, optimize_lora, optimize_subject


def _images_equal(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


# --- early stopping (paper Appendix C: x = 3 %, n = 7) ---------------------------------------------------------


def test_early_stopping_positive_losses():
    stop = EarlyStopping(0.03, 7)
    assert stop.update(1.0)  # the first loss is always the best so far
    assert stop.update(0.96)  # 4 % better
    assert not stop.update(0.94)  # ~2.1 % better than 0.96: not enough
    assert stop.best == 0.96
    for _ in range(5):
        assert not stop.update(0.95)
    assert not stop.should_stop  # 6 stale iterations
    assert not stop.update(0.95)
    assert stop.should_stop  # 7 stale iterations


def test_early_stopping_negative_losses():
    # The reference code's -cos loss: improving means becoming more negative.
    stop = EarlyStopping(0.03, 7)
    stop.update(-0.50)
    assert stop.update(-0.52)  # 4 % better
    assert not stop.update(-0.53)  # ~1.9 % better
    assert not stop.update(-0.40)  # worse
    assert stop.best == -0.52 and stop.stale == 2


def test_early_stopping_counter_resets_on_improvement():
    stop = EarlyStopping(0.03, 3)
    stop.update(1.0)
    stop.update(1.0)
    stop.update(1.0)
    assert stop.update(0.5)
    assert stop.stale == 0 and not stop.should_stop


def test_early_stopping_zero_threshold_needs_strict_improvement():
    stop = EarlyStopping(0.0, 1)
    stop.update(1.0)
    assert not stop.update(1.0)
    assert stop.should_stop


# --- the loop on tiny models ----------------------------------------------------------------------------------


@pytest.fixture
def sd_backbone(model_dirs):
    return load_backbone(str(model_dirs["sd"]), device="cpu")


def test_only_lora_parameters_get_gradients(sd_backbone, subject, make_config):
    config = make_config("sd")
    modules = add_lora(sd_backbone, config.lora)
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cpu", torch.float32)
    image = sd_backbone.sample(sd_backbone.encode_prompt("a dog"), torch.Generator().manual_seed(0), 1, 1)
    loss_fn(image)["loss"].backward()
    grads = {n: p.grad for n, p in sd_backbone.denoiser.named_parameters() if p.grad is not None}
    assert grads and all(".lora_A." in n or ".lora_B." in n for n in grads)
    # B = 0 at start, so only B moves on the first step (A's gradient is exactly zero).
    assert all((g.abs().sum() > 0) == (".lora_B." in n) for n, g in grads.items())
    for component in (sd_backbone.pipe.vae, sd_backbone.pipe.text_encoder, *loss_fn.nets.values()):
        assert all(p.grad is None and not p.requires_grad for p in component.parameters())
    assert set(modules) == {"unet"}


def test_zero_init_lora_is_identity(sd_backbone, make_config):
    cond = sd_backbone.encode_prompt("a dog")
    before = sd_backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1)
    add_lora(sd_backbone, make_config("sd").lora)
    after = sd_backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1)
    assert torch.equal(before, after.detach())


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_loss_falls_and_base_weights_are_untouched(model_dirs, subject, make_config, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    frozen = {
        name: {k: v.clone() for k, v in getattr(backbone.pipe, name).state_dict().items()}
        for name in ("unet", "vae", "text_encoder")
    }
    config = make_config(family, max_iters=8, patience=8)
    config.memory.offload_text_encoders = False  # keep the text encoder in place, to compare its weights
    result = optimize_subject(backbone, subject, config, progress=False)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 8 and result.stop_reason == "max_iters"
    assert losses[-1] < 0.8 * losses[0] and result.best_loss < losses[0]
    for name, state in frozen.items():
        after = {
            k.replace(".base_layer", ""): v
            for k, v in getattr(backbone.pipe, name).state_dict().items()
            if "lora_" not in k
        }
        assert after.keys() == state.keys()
        assert all(torch.equal(state[k], after[k]) for k in state), f"{name} base weights changed"


def test_best_snapshot_is_the_weights_that_made_the_best_image(sd_backbone, subject, make_config):
    # Regression for the reference code, which returned the last iterate's weights as "best". With a 99 %
    # improvement threshold only iteration 0 counts as an improvement, so best != last.
    config = make_config("sd", max_iters=10, patience=3, min_improvement=0.99)
    frames = []
    result = optimize_subject(
        sd_backbone, subject, config, callback=lambda i, img, t: frames.append(img), progress=False
    )
    assert result.best_iteration == 0 and result.stop_reason == "converged" and len(frames) == 4
    assert _images_equal(result.best_image, frames[0])
    assert not _images_equal(frames[-1], frames[0])  # the weights did move

    cond = sd_backbone.encode_prompt(config.train_prompt)
    with torch.no_grad():
        again = sd_backbone.sample(cond, torch.Generator().manual_seed(config.optim.seed), 1, 1)
    from siso.images import tensor_to_pil

    assert _images_equal(tensor_to_pil(again)[0], result.best_image)  # the backbone carries the best weights
    modules = {"unet": sd_backbone.denoiser}
    assert all(torch.equal(v, result.best_lora["unet"][k]) for k, v in snapshot(modules)["unet"].items())


def test_best_snapshot_mid_run(sd_backbone, subject, make_config):
    config = make_config("sd", max_iters=6, patience=6, min_improvement=0.0)
    frames = []
    result = optimize_subject(
        sd_backbone, subject, config, callback=lambda i, img, t: frames.append(img), progress=False
    )
    assert result.best_iteration > 0
    assert _images_equal(result.best_image, frames[result.best_iteration])
    losses = [h["loss"] for h in result.history]
    assert result.best_loss == losses[result.best_iteration] == min(losses)


def test_snapshot_is_a_copy(sd_backbone, make_config):
    modules = add_lora(sd_backbone, make_config("sd").lora)
    snap = snapshot(modules)
    with torch.no_grad():
        for p in sd_backbone.denoiser.parameters():
            if p.requires_grad:
                p.add_(1.0)
    assert not all(torch.equal(v, dict(sd_backbone.denoiser.named_parameters())[k]) for k, v in snap["unet"].items())
    restore(modules, snap)
    assert all(torch.equal(v, dict(sd_backbone.denoiser.named_parameters())[k]) for k, v in snap["unet"].items())


def test_callback_can_stop_the_run(sd_backbone, subject, make_config):
    seen = []

    def callback(iteration, image, terms):
        seen.append((iteration, image.size, sorted(terms)))
        return iteration == 1

    result = optimize_subject(sd_backbone, subject, make_config("sd", max_iters=10), callback=callback, progress=False)
    assert result.stop_reason == "callback" and len(result.history) == 2
    assert seen == [(0, (32, 32), ["dino", "ir", "loss"]), (1, (32, 32), ["dino", "ir", "loss"])]


def test_non_finite_loss_stops_and_keeps_best(sd_backbone, subject, make_config):
    config = make_config("sd", max_iters=10, patience=10, min_improvement=0.0)
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cpu", torch.float32)
    calls = {"n": 0}

    def flaky(images):
        calls["n"] += 1
        terms = loss_fn(images)
        if calls["n"] == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    result = optimize_subject(sd_backbone, subject, config, loss_fn=flaky, progress=False)
    assert result.stop_reason == "non-finite loss" and len(result.history) == 3
    assert math.isnan(result.history[-1]["loss"]) and result.best_iteration in (0, 1)


def test_keyboard_interrupt_returns_best_so_far(sd_backbone, subject, make_config):
    def callback(iteration, image, terms):
        if iteration == 2:
            raise KeyboardInterrupt

    result = optimize_subject(sd_backbone, subject, make_config("sd", max_iters=10), callback=callback, progress=False)
    assert result.stop_reason == "interrupted" and not result.complete
    assert result.best_iteration <= 2


def test_text_encoder_lora(model_dirs, subject, make_config):
    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    config = make_config("sdxl", max_iters=4, min_improvement=0.0)
    config.lora.train_text_encoder = True
    before = backbone.pipe.text_encoder_2.text_model.final_layer_norm.weight.clone()
    result = optimize_subject(backbone, subject, config, progress=False)
    assert set(result.best_lora) == {"unet", "text_encoder", "text_encoder_2"}
    assert torch.equal(before, backbone.pipe.text_encoder_2.text_model.final_layer_norm.weight)
    assert result.best_iteration > 0
    assert any(v.abs().sum() > 0 for k, v in result.best_lora["text_encoder"].items() if "lora_B" in k)


def test_bf16_backbone_trains_fp32_lora(model_dirs, subject, make_config):
    backbone = load_backbone(str(model_dirs["sdxl"]), dtype="bf16", device="cpu")
    config = make_config("sdxl", max_iters=3)
    config.dtype = "bf16"
    result = optimize_subject(backbone, subject, config, progress=False)
    assert backbone.pipe.unet.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in result.best_lora["unet"].values())
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_runs_are_reproducible_whatever_the_global_seed(model_dirs, subject, make_config):
    """The LoRA's random A matrices are drawn from ``optim.seed``: config.json reproduces a run exactly."""
    histories = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
        result = optimize_subject(backbone, subject, make_config("sd", max_iters=3), progress=False)
        histories.append([h["loss"] for h in result.history])
    assert histories[0] == histories[1]
    assert torch.initial_seed() == 2  # the caller's generator state is left alone


def test_text_encoder_lora_has_its_own_lr_and_weight_decay(model_dirs, subject, make_config, monkeypatch):
    config = make_config("sd", max_iters=1)
    config.lora = LoraSettings(train_text_encoder=True, text_encoder_lr=5e-6, text_encoder_weight_decay=1e-3)
    seen = {}
    original = torch.optim.AdamW.__init__

    def record(self, groups, **kw):
        seen["groups"] = [(g["lr"], g["weight_decay"]) for g in groups]
        original(self, groups, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", record)
    optimize_subject(load_backbone(str(model_dirs["sd"]), device="cpu"), subject, config, progress=False)
    assert seen["groups"] == [(1e-2, 1e-2), (5e-6, 1e-3)]  # unet: optim's lr and decay; text encoder: its own
    with pytest.raises(ValueError, match="text_encoder_weight_decay"):
        LoraSettings(text_encoder_weight_decay=float("nan"))


def test_last_iteration_builds_no_graph_and_draws_the_same_image(model_dirs, subject, make_config):
    runs = {}
    for max_iters in (3, 4):
        backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
        config = make_config("sd", max_iters=max_iters, patience=max_iters, min_improvement=0.0)
        loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, "cpu", torch.float32)
        graphs, frames = [], []

        def objective(image, loss_fn=loss_fn, graphs=graphs):
            graphs.append(image.requires_grad)
            return loss_fn(image)

        render = functools.partial(_render, backbone, config)
        optimize_lora(backbone, render, objective, config, lambda i, img, t, f=frames: f.append(img), progress=False)
        runs[max_iters] = graphs, frames
    assert runs[3][0] == [True, True, False] and runs[4][0] == [True, True, True, False]
    # Iteration 2 of both runs has the same weights: without a graph it draws the same image.
    assert np.array_equal(np.asarray(runs[3][1][2]), np.asarray(runs[4][1][2]))


def _render(backbone, config, cond):
    opt = config.optim
    generator = torch.Generator().manual_seed(opt.seed)
    return backbone.sample(cond, generator, opt.num_inference_steps, opt.grad_steps, opt.guidance_scale)


def test_channels_last_vae_changes_images_only_by_rounding_and_is_undone(sd_backbone):
    cond = sd_backbone.encode_prompt("a dog")
    plain = sd_backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1).detach()
    with sd_backbone.channels_last_vae():
        conv = sd_backbone.pipe.vae.decoder.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        fast = sd_backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1).detach()
    assert sd_backbone.pipe.vae.decoder.conv_in.weight.is_contiguous()  # the stock layout again for `generate`
    assert (fast - plain).abs().max() <= 1e-5  # different convolution kernels, same image up to float rounding


def _checkpointing(backbone) -> dict[str, bool]:
    """Diffusers model of the pipeline -> whether it recomputes activations in the backward pass."""
    components = backbone.pipe.components.items()
    return {name: m.is_gradient_checkpointing for name, m in components if isinstance(m, ModelMixin)}


def test_gradient_checkpointing_is_on_for_the_run_only(sd_backbone, subject, make_config):
    config = make_config("sd", max_iters=2)
    config.memory = MemorySettings(gradient_checkpointing=True)
    before = _checkpointing(sd_backbone)
    assert before == {"unet": False, "vae": False}
    during = []
    optimize_subject(
        sd_backbone, subject, config, progress=False, callback=lambda *_: during.append(_checkpointing(sd_backbone))
    )
    assert during == [{"unet": True, "vae": True}] * 2  # on while it runs
    assert _checkpointing(sd_backbone) == before  # off again, as it was before the run


def test_several_photos_and_negatives_from_the_config(model_dirs, subject, make_config):
    config = make_config("sd", max_iters=2)
    config.negatives.kinds = ("blur",)
    mirrored = subject.transpose(0)  # PIL's FLIP_LEFT_RIGHT: a second photo of the same subject
    result = optimize_subject(
        load_backbone(str(model_dirs["sd"]), "fp32", "cpu"), [subject, mirrored], config, progress=False
    )
    first = result.history[0]
    assert {"dino", "ir", "negative/blur", "loss"} <= set(first)
    # Iteration 0 is the frozen model's image: its similarity is the mean over both photos'.
    frozen = load_backbone(str(model_dirs["sd"]), "fp32", "cpu")
    with torch.no_grad():
        image = generation_render(frozen, config)(frozen.encode_prompt(config.train_prompt))
        alone = [
            SimilarityLoss.from_pretrained(config.similarity, p, "cpu", torch.float32)(image)
            for p in (subject, mirrored)
        ]
    for name in ("dino", "ir"):
        assert first[name] == pytest.approx((float(alone[0][name]) + float(alone[1][name])) / 2, abs=1e-6)
    config.negatives.kinds = ("generic",)  # its images come from the run (draw_generic), not from here
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        optimize_subject(frozen, subject, config, progress=False)
