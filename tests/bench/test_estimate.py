"""`siso bench --memory`: the meta-device estimate against the same tiny models run on real tensors."""

import json

import pytest
import torch
import torch.nn.functional as F

from siso.backbones import config_for, load_backbone
from siso.bench.estimate import GB, FusedAttention, estimate_memory, weight_bytes
from siso.cli import main
from siso.config import SimilaritySettings, SisoConfig
from siso.lora import add_lora
from siso.losses import SimilarityLoss, load_nets


def _tiny(model_dirs, subject, family: str, device: str):
    """The tiny backbone with LoRA and its similarity loss, on the CPU or (moved there) on the meta device."""
    directory = str(model_dirs[family])
    # The family's steps (Sana: 20, 3 with gradient), fewer for Sana: the steps without gradient keep nothing.
    optim = {"num_inference_steps": 4} if family == "sana" else {}
    config = config_for(SisoConfig, directory, train_prompt="a photo of a dog", optim=optim)
    backbone = load_backbone(directory, "fp32", "cpu")
    similarity = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    nets, weights = load_nets(similarity, "cpu", torch.float32)
    for module in [*backbone.pipe.components.values(), *nets.values()]:
        if isinstance(module, torch.nn.Module):
            module.to(device)
    add_lora(backbone, config.lora)
    return backbone, SimilarityLoss(nets, subject, weights), config


def _storage_bytes(module: torch.nn.Module) -> int:
    """Bytes a module's parameters and buffers hold; a quantized tensor counts its packed data and scales."""

    def nbytes(tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            return sum(nbytes(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
        return tensor.untyped_storage().nbytes()

    return sum(nbytes(t) for t in [*module.parameters(), *module.buffers()])


@pytest.mark.parametrize("family", ["sd", "sana"])
def test_the_meta_estimate_is_what_real_tensors_hold_and_keep(model_dirs, subject, family):
    real_backbone, real_loss, config = _tiny(model_dirs, subject, family, "cpu")
    real = estimate_memory(real_backbone, real_loss, config)
    meta_backbone, meta_loss, config = _tiny(model_dirs, subject, family, "meta")
    meta = estimate_memory(meta_backbone, meta_loss, config)
    # Weights: counted exactly, on the meta device as on real tensors (the LoRA is trainable: not a weight).
    frozen = _storage_bytes(real_backbone.denoiser) - sum(
        p.untyped_storage().nbytes() for p in real_backbone.denoiser.parameters() if p.requires_grad
    )
    assert weight_bytes(meta_backbone.denoiser) == frozen
    assert meta["weights_gb"] == real["weights_gb"] and meta["parameters_b"] == real["parameters_b"]
    assert meta["lora_adam_gb"] == real["lora_adam_gb"] > 0
    # Activations: what the saved-tensor hook counts on the meta device is what it counts on real tensors, byte for
    # byte (tolerance 0: storage sizes follow from shapes and dtypes, which the meta device computes as the CPU does).
    assert meta["activations_gb"] == real["activations_gb"]
    assert all(gb > 0 for option in real["activations_gb"].values() for gb in option.values())
    # Checkpointing keeps less of the denoiser's graph (and of the VAE decode's, where it checkpoints: not Sana's).
    plain, checkpointed = real["activations_gb"]["default"], real["activations_gb"]["checkpointing"]
    assert checkpointed["denoiser"] < plain["denoiser"]
    assert checkpointed["similarity"] == plain["similarity"]
    if family == "sd":
        assert checkpointed["vae decode"] < plain["vae decode"]
    estimate = real["estimate_gb"]
    assert estimate["default"] > estimate["checkpointing"] > estimate["int8"] > estimate["nf4"] > 0
    assert estimate["checkpointing"] == pytest.approx(
        real["weights_gb"]["denoiser"]
        + real["weights_gb"]["vae"]
        + real["weights_gb"]["similarity"]
        + real["lora_adam_gb"]
        + sum(checkpointed.values())
    )


def test_quantized_weights_are_what_torchao_stores_and_nf4_packs_half_a_byte(model_dirs):
    # int8: the bytes torchao's weight-only quantization leaves in the tiny denoiser.
    plain = load_backbone(str(model_dirs["sd"]), "fp32", "cpu").denoiser
    quantized = load_backbone(str(model_dirs["sd"]), "fp32", "cpu", quantize="int8").denoiser
    assert weight_bytes(plain, "int8") == _storage_bytes(quantized) < weight_bytes(plain)
    # One bf16 linear layer 128 -> 64, worked out by hand: weight 2 bytes each; int8 1 byte each and per output row
    # an fp32 scale and an int8 zero point; nf4 half a byte each and an fp32 absmax per 64 weights; bias unchanged.
    layer = torch.nn.Linear(128, 64, dtype=torch.bfloat16, device="meta").requires_grad_(False)
    assert weight_bytes(layer) == 128 * 64 * 2 + 64 * 2
    assert weight_bytes(layer, "int8") == 128 * 64 + 64 * 5 + 64 * 2
    assert weight_bytes(layer, "nf4") == 128 * 64 // 2 + 128 * 64 // 64 * 4 + 64 * 2


def test_fused_attention_keeps_what_a_fused_kernel_keeps_inside_the_block_only():
    query = torch.randn(1, 2, 256, 8, device="meta", dtype=torch.bfloat16, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.untyped_storage().nbytes())
        return tensor

    stock = F.scaled_dot_product_attention
    with FusedAttention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.scaled_dot_product_attention(query, query, query)
    assert F.scaled_dot_product_attention is stock
    # query (key and value are the same storage), the output, a row log-sum-exp in fp32: no 256 x 256 matrix.
    assert sorted(set(saved)) == [256 * 2 * 4, 256 * 2 * 8 * 2]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.scaled_dot_product_attention(query, query, query)
    assert max(saved) >= 256 * 256 * 2 * 4  # outside the block the meta device's math path keeps the matrix


def test_cli_bench_memory_prints_the_real_size_table(tmp_path, capsys):
    out = tmp_path / "memory.json"
    assert main(["bench", "--memory", "--model", "sd-turbo", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Estimated GPU memory while optimizing, bf16, 512 px" in text
    assert "| estimated GB: default / --gradient-checkpointing / + --quantize int8 / + --quantize nf4 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| sd-turbo |"))
    result = json.loads(out.read_text())
    assert result["dtype"] == "bf16" and result["resolution"] == 512
    estimate = result["estimates"]["sd-turbo"]
    assert estimate["parameters_b"]["denoiser"] == pytest.approx(0.866, abs=0.001)  # the published UNet: 866M
    assert estimate["weights_gb"]["denoiser"] == pytest.approx(2 * estimate["parameters_b"]["denoiser"])  # bf16
    figures = [estimate["estimate_gb"][option] for option in ("default", "checkpointing", "int8", "nf4")]
    assert figures == sorted(figures, reverse=True)
    assert row.endswith(" | " + " / ".join(f"{gb:.1f}" for gb in figures) + " |")
    assert estimate["estimate_gb"]["default"] * GB > 4e9  # weights alone: 3.8 GB


def test_cli_bench_memory_refuses_a_model_it_cannot_build(capsys):
    assert main(["bench", "--memory", "--model", "my/model"]) == 2
    assert "siso bench --memory estimates these backbones: sd-turbo" in capsys.readouterr().err
