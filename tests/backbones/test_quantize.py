"""``--quantize``: the frozen denoiser quantized (`siso.backbones.quantize`), the LoRA in full precision; from Python
and from the command line, learning and reusing a subject."""

import io
import json

import numpy as np
import pytest
import torch
from console import run_siso
from PIL import Image

from siso.backbones import Backbone, load_backbone
from siso.backbones.quantize import check_quantize
from siso.config import MemorySettings
from siso.optimize import optimize_subject

SIZES = {"sd": None, "sdxl": None, "flux": 32, "sana": 64}
GUIDANCE = {"sd": 0.0, "sdxl": 0.0, "flux": 0.0, "sana": 4.5}


def load(model_dirs, family, **kw) -> Backbone:
    return load_backbone(str(model_dirs[family]), device="cpu", resolution=SIZES[family], **kw)


def weight_bytes(module: torch.nn.Module) -> int:
    """What the module's weights take when saved (quantized tensors count their packed data)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


# --- quantization -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_int8_quantized_denoiser_trains_only_full_precision_lora(model_dirs, subject, make_config, family):
    from torchao.quantization import Int8Tensor

    plain = load(model_dirs, family)
    quantized = load(model_dirs, family, quantize="int8")
    linears = [m for m in quantized.denoiser.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    # int8 of fp32 is a quarter; the tiny model's biases, norms, convolutions and per-row scales leave 0.4-0.75.
    assert weight_bytes(quantized.denoiser) < 0.8 * weight_bytes(plain.denoiser)
    assert all(not isinstance(m.weight, Int8Tensor) for m in quantized.pipe.vae.modules() if hasattr(m, "weight"))

    # The base model is approximated, not replaced: the same seed gives nearly the same image.
    guidance = GUIDANCE[family]
    ours = np.asarray(quantized.generate("a dog", 0, 2, guidance), dtype=np.float32)
    reference = np.asarray(plain.generate("a dog", 0, 2, guidance), dtype=np.float32)
    assert np.abs(ours - reference).mean() < 3.0  # of 255

    config = make_config(family, max_iters=4, patience=4, min_improvement=0.0, guidance_scale=guidance)
    config.memory.quantize = "int8"  # recorded; loading applied it
    result = optimize_subject(quantized, subject, config, progress=False)
    assert len({h["loss"] for h in result.history}) == 4  # the LoRA moved the image
    lora = [p for n, p in quantized.denoiser.named_parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 and not isinstance(p, Int8Tensor) for p in lora)
    assert all("lora_" in n for n, p in quantized.denoiser.named_parameters() if p.requires_grad)


def test_quantize_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match=r"nf4 \(bitsandbytes\) runs on CUDA GPUs only; on this device use "):
        check_quantize("nf4", "cpu")
    with pytest.raises(ValueError, match="quantize must be one of int8, nf4"):
        MemorySettings(quantize="fp4")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--quantize int8 needs torchao: pip install 'siso\[quantize\]'"):
        check_quantize("int8", "cpu")


@pytest.mark.parametrize("family", ["flux", "sana"])
def test_cli_quantized_run_and_quantized_reuse(model_dirs, subject_path, similarity_args, tmp_path, family):
    out, again = tmp_path / "run", tmp_path / "again"
    prompts = ["--prompt", "a dog on the beach", "--steps", "2", "--seed", "3"]
    proc = run_siso(
        [
            "generate",
            "--subject",
            str(subject_path),
            "--model",
            str(model_dirs[family]),
            *similarity_args,
            "--resolution",
            str(SIZES[family]),
            "--max-iters",
            "3",
            "--lr",
            "1e-2",
            "--quantize",
            "int8",
            "--gradient-checkpointing",
            *prompts,
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no notices from torchao or the quantizers
    memory = json.loads((out / "config.json").read_text())["siso"]["memory"]
    assert memory == {"offload_text_encoders": True, "gradient_checkpointing": True, "quantize": "int8"}
    [record] = json.loads((out / "metrics.json").read_text())["images"]

    proc = run_siso(["generate", "--lora", str(out / "lora"), "--quantize", "int8", *prompts, "--out", str(again)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads((again / "config.json").read_text())["quantize"] == "int8"
    assert np.array_equal(np.asarray(Image.open(out / record["file"])), np.asarray(Image.open(again / record["file"])))
