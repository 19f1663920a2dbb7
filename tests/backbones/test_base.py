"""Memory levers of the backbone (`siso.config.MemorySettings`): text encoders out of the device's memory once the
prompt is encoded, and gradient checkpointing; each changes what is kept in memory and leaves the images unchanged."""

import numpy as np
import pytest
import torch

from siso.backbones import Backbone, load_backbone
from siso.lora import add_lora
from siso.optimize import optimize_subject

SIZES = {"sd": None, "sdxl": None, "flux": 32, "sana": 64}
GUIDANCE = {"sd": 0.0, "sdxl": 0.0, "flux": 0.0, "sana": 4.5}


def load(model_dirs, family, **kw) -> Backbone:
    return load_backbone(str(model_dirs[family]), device="cpu", resolution=SIZES[family], **kw)


# --- text encoders: encoded once, then out of the device's memory -------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_text_encoders_are_freed_on_cpu_and_images_are_unchanged(model_dirs, subject, make_config, family):
    images, params = {}, {}
    for offload in (False, True):
        backbone = load(model_dirs, family)
        config = make_config(family, max_iters=3, patience=3, min_improvement=0.0, guidance_scale=GUIDANCE[family])
        config.memory.offload_text_encoders = offload
        result = optimize_subject(backbone, subject, config, progress=False)
        params[offload] = sum(p.numel() for m in backbone.pipe.components.values() if isinstance(m, torch.nn.Module)
                              for p in m.parameters())  # fmt: skip
        assert (backbone.pipe.text_encoder is None) == offload  # freed once the prompt was encoded
        images[offload] = [
            np.asarray(result.best_image),
            np.asarray(backbone.generate("a dog", 1, 1, GUIDANCE[family])),
        ]
        assert backbone.pipe.text_encoder is not None  # loaded again for the new prompt
    assert params[True] < params[False]
    for kept, freed in zip(images[False], images[True], strict=True):
        assert np.array_equal(kept, freed)


def test_flux_with_clip_lora_keeps_clip_and_never_reloads_t5_while_optimizing(model_dirs, subject, make_config):
    backbone = load(model_dirs, "flux")
    loads = []
    load_component = backbone.load_component
    backbone.load_component = lambda name: loads.append(name) or load_component(name)
    config = make_config("flux", max_iters=3, patience=3, min_improvement=0.0)
    config.lora.train_text_encoder = True  # CLIP-L is encoded every iteration; T5's embedding is kept
    optimize_subject(backbone, subject, config, progress=False)
    assert backbone.pipe.text_encoder is not None and backbone.pipe.text_encoder_2 is None
    assert loads == []
    backbone.generate("a dog on the beach", 0, 1)
    assert loads == ["text_encoder_2"] and backbone.pipe.text_encoder_2 is not None


def test_text_encoders_move_to_cpu_from_an_accelerator(model_dirs, monkeypatch):
    backbone = load(model_dirs, "sdxl")
    moves = {name: [] for name in ("text_encoder", "text_encoder_2")}
    for name, log in moves.items():
        # An instance attribute shadows nn.Module.to: record the moves without an accelerator.
        object.__setattr__(getattr(backbone.pipe, name), "to", lambda device, log=log: log.append(str(device)))
    monkeypatch.setattr(Backbone, "device", property(lambda self: torch.device("cuda")))
    assert backbone.park_text_encoders(keep=["text_encoder"]) == ["text_encoder_2"]
    assert moves == {"text_encoder": [], "text_encoder_2": ["cpu"]}
    assert backbone.pipe.text_encoder_2 is not None  # moved, not freed
    backbone.ensure_text_encoders()
    assert moves == {"text_encoder": [], "text_encoder_2": ["cpu", "cuda"]}
    backbone.ensure_text_encoders()  # already back: no move
    assert moves["text_encoder_2"] == ["cpu", "cuda"]


# --- gradient checkpointing -----------------------------------------------------------------------------------------


def _saved_bytes_and_grads(backbone: Backbone, family: str) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """Bytes the autograd graph keeps for backward during one grad-enabled sample, the image, and the LoRA grads."""
    steps, grad_steps = (3, 2) if family == "sana" else (1, 1)
    with torch.no_grad():
        cond = backbone.encode_prompt("a photo of a dog", GUIDANCE[family])
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        image = backbone.sample(cond, torch.Generator().manual_seed(0), steps, grad_steps, GUIDANCE[family])
    image.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None}
    return sum(saved.values()), image.detach(), grads


@pytest.mark.parametrize("family", ["sd", "sdxl", "flux", "sana"])
def test_gradient_checkpointing_keeps_less_and_changes_nothing(model_dirs, make_config, family):
    results = {}
    for checkpointing in (False, True):
        backbone = load(model_dirs, family)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            add_lora(backbone, make_config(family).lora)
        with torch.no_grad():  # a non-zero LoRA, so that every LoRA matrix gets a gradient
            for name, p in backbone.denoiser.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
        if checkpointing:
            expected = ["transformer"] if family == "sana" else [backbone.denoiser_name, "vae"]
            assert backbone.enable_gradient_checkpointing() == expected  # Sana's DC-AE does not support it
        results[checkpointing] = _saved_bytes_and_grads(backbone, family)
    (plain_bytes, plain_image, plain_grads), (ckpt_bytes, ckpt_image, ckpt_grads) = results[False], results[True]
    assert ckpt_bytes < 0.8 * plain_bytes, (plain_bytes, ckpt_bytes)
    assert torch.equal(plain_image, ckpt_image)
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_gradient_checkpointing_block_turns_off_only_what_it_turned_on(model_dirs):
    backbone = load(model_dirs, "sd")
    backbone.pipe.vae.enable_gradient_checkpointing()  # on before the block: it stays on
    with pytest.raises(RuntimeError, match="stopped"), backbone.gradient_checkpointing() as names:
        assert names == ["unet", "vae"] and backbone.denoiser.is_gradient_checkpointing
        raise RuntimeError("stopped")  # a run that ends with an error restores it too
    assert not backbone.denoiser.is_gradient_checkpointing
    assert backbone.pipe.vae.is_gradient_checkpointing
