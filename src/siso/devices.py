"""Devices and dtypes: which device to use, whether this machine can, and the weights' dtype and memory on it."""

from __future__ import annotations

import torch

__all__ = ["TORCH_DTYPES", "check_device", "default_device", "own_cpu_memory", "resolve_dtype", "usable_devices"]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The alignment of PyTorch's own CPU allocations (c10's gAlignment).
CPU_ALIGNMENT = 64


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str | None) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere (CPU: most have no native bf16 and run it ~250x slower;
    MPS: fp32 is the safe choice); any other dtype is returned as is."""
    if dtype != "auto":
        return dtype
    return "bf16" if torch.device(device or default_device()).type == "cuda" else "fp32"


def usable_devices() -> list[str]:
    """The devices this torch build can use on this machine: cpu, each CUDA GPU, mps."""
    devices = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return [*devices, "mps"] if torch.backends.mps.is_available() else devices


def check_device(device: str) -> str:
    """Return ``device`` if this torch can use it; cheap, so callers check before loading any model.

    Raises:
        ValueError: not a torch device string, or a device this machine or torch build lacks (the message lists the
            usable ones).
    """
    usable = ", ".join(usable_devices())
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; usable here: {usable}") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (parsed.index is None or parsed.index < count):
            return device
        if torch.version.cuda is None:
            reason = f"torch {torch.__version__} is built without CUDA"
        else:
            reason = f"{count} CUDA GPU(s) visible"
    elif parsed.type == "mps":
        if torch.backends.mps.is_available():
            return device
        reason = "MPS is not available"
    else:
        reason = f"siso does not run on {parsed.type}"
    raise ValueError(f"device {device!r} cannot be used ({reason}); usable here: {usable}")


def own_cpu_memory(*modules: torch.nn.Module | None) -> int:
    """Copy the CPU parameters and buffers of ``modules`` that are not `CPU_ALIGNMENT`-aligned into memory of
    PyTorch's own (``None`` skipped).

    A model loaded from safetensors on the CPU keeps views of the file's memory map, at the file's 8-byte offsets,
    or copies, depending on the loading path (diffusers takes another one under ``torch.distributed``). MKL's
    matrix products sum in an order that depends on the operands' alignment, so the same model gave results
    differing by float rounding with how it was loaded (1e-7 in a tiny UNet's first linear layer, which ReNoise's
    fixed-point iteration amplifies into a different edit on random test models). Copied, every weight is aligned
    as PyTorch aligns its tensors, and a run computes the same numbers however it was started. Loaded once, this
    copies at most the model (from the page cache, with no second copy kept).

    Returns:
        How many tensors were copied.
    """
    copied = 0
    for module in filter(None, modules):
        for tensor in (*module.parameters(), *module.buffers()):
            plain = type(tensor.data) is torch.Tensor  # (not a quantized tensor subclass, whose data it owns)
            if plain and tensor.device.type == "cpu" and tensor.data_ptr() % CPU_ALIGNMENT:
                tensor.data = tensor.data.clone()
                copied += 1
    return copied
