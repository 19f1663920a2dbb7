"""``--quantize``: the frozen denoiser's linear weights in 8 or 4 bits, through diffusers' own quantization backends.

Only the denoiser is quantized: it is most of the weights (FLUX.1-schnell's transformer is 12B of its 17B
parameters), and it is the module the loop runs with gradients. peft puts the LoRA on the quantized linear layers
(``peft.tuners.lora.torchao`` / ``bnb``) and keeps the LoRA weights in full precision. The text encoders are moved
off the accelerator during optimization instead (`siso.config.MemorySettings.offload_text_encoders`).

| method | backend | devices | bytes per weight |
|---|---|---|---|
| ``int8`` | torchao ``Int8WeightOnlyConfig`` (``TorchAoConfig``) | CPU and CUDA | 1 |
| ``nf4`` | bitsandbytes 4-bit NF4 (``BitsAndBytesConfig``) | CUDA only (diffusers refuses without a GPU) | 0.5 |
"""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = {"int8": "torchao", "nf4": "bitsandbytes"}  # method -> the package it needs


def check_quantize(method: str | None, device: str | None) -> None:
    """Refuse, before anything loads, a quantization method this machine cannot run.

    Args:
        method: ``None`` (no quantization), ``int8`` or ``nf4``.
        device: The torch device the model will run on (``None``: the default device).

    Raises:
        ValueError: an unknown method, the method's package is not installed, or ``nf4`` without a CUDA device.
    """
    if method is None:
        return
    if method not in BACKENDS:
        raise ValueError(f"--quantize must be one of {', '.join(BACKENDS)}, got {method!r}")
    on_cuda = torch.device(device).type == "cuda" if device else torch.cuda.is_available()
    if method == "nf4" and not on_cuda:
        raise ValueError("--quantize nf4 (bitsandbytes) runs on CUDA GPUs only; on this device use --quantize int8")
    package = BACKENDS[method]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"--quantize {method} needs {package}: pip install 'siso[quantize]'")


def quantization_config(method: str, dtype: torch.dtype):
    """The diffusers quantization config of ``method`` for a denoiser computing in ``dtype``."""
    if method == "int8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if method == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    raise ValueError(f"unknown quantization method {method!r}")
