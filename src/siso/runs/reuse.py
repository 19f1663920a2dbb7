"""Reusing a saved subject: ``siso generate --lora`` (stage two of prompt simplification), no optimization."""

from __future__ import annotations

from pathlib import Path

from siso.backbones import check_ip_adapter, load_backbone
from siso.devices import resolve_dtype
from siso.lora import check_lora_file, load_lora, read_subject_info, saved_ip_adapter
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.run import versions


def run_reuse(
    out: RunFolder,
    lora_dir: str | Path,
    job: GenerationJob,
    model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    command: list[str] | None = None,
    progress: bool = True,
    quantize: str | None = None,
) -> dict:
    """Generate every prompt x seed from a saved subject (stage two of prompt simplification), no optimization.

    Args:
        lora_dir: A folder written by `siso.lora.save_lora` (or any diffusers LoRA folder, with ``model`` given).
        model: Backbone to load; defaults to the one named in the folder's ``siso_subject.json``.
        quantize: Quantize the base model's denoiser (`siso.backbones.quantize`); the LoRA is loaded in full precision.

    Raises:
        FileNotFoundError: ``lora_dir`` has no ``pytorch_lora_weights.safetensors``.
        LoraError: the folder's files are damaged (checked before the model loads), or its weights do not fit the
            model.
        ValueError: no model given and none recorded in the folder.
    """
    lora_dir = Path(lora_dir)
    check_lora_file(lora_dir)
    info = read_subject_info(lora_dir)
    model = model or info.get("model")
    if model is None:
        raise ValueError(f"{lora_dir} does not say which model it was learned on; pass --model")
    ip_adapter = saved_ip_adapter(lora_dir)  # the adapter the subject was learned over, and its image(s)
    if ip_adapter is not None:
        check_ip_adapter(model)
    dtype = resolve_dtype(dtype, device)
    backbone = load_backbone(model, dtype, device, info.get("resolution"), quantize)
    if ip_adapter is not None:
        backbone.load_ip_adapter(*ip_adapter)
    load_lora(backbone, lora_dir)  # before the first write: a LoRA that does not fit leaves no output folder
    out.write_json(
        "config.json",
        {
            "command": command,
            "lora": str(lora_dir),
            "model": model,
            "dtype": dtype,
            "quantize": quantize,
            "job": job.__dict__,
            "versions": versions(),
        },
    )
    metrics: dict = {"complete": False}
    try:
        metrics["images"] = out.generate_images(backbone, job, progress)
        metrics["complete"] = True
    finally:
        out.write_json("metrics.json", metrics)
    return metrics
