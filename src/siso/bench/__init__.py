"""``siso bench``: what a SISO iteration costs on this machine, at the published architectures with random weights.

Every configuration runs the real loop (`siso.optimize.optimize_lora`) for warm-up + N iterations and reports the
median and spread of seconds per iteration, CPU seconds (and those in the kernel: page faults), peak memory, FLOPs per
iteration (torch's ``FlopCounterMode``), the achieved TFLOP/s and its share of the device's bf16 peak (known GPUs
only), the time from start to the first image, and by part, seconds and CPU seconds in the kernel. ``reference`` does
what the SISO reference code does (fp32, the prompt re-encoded every iteration, every model resident on the device);
siso's ``default`` is reported as a ratio to it, so the comparison holds on a noisy machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from siso import pages
from siso.backbones import default_device, resolve_dtype
from siso.bench.architectures import check_tiny_vae
from siso.bench.measure import CONFIGURATIONS, PARTS, Configuration, optim_settings, run_configuration
from siso.config import DTYPES, SimilaritySettings

__all__ = ["CONFIGURATIONS", "BenchError", "BenchSettings", "report", "run_bench"]


@dataclass
class BenchSettings:
    """What to benchmark.

    Attributes:
        model: A backbone name (built at its published architecture, random weights), or a local diffusers folder
            (loaded, with the similarity networks of ``similarity``: the tests' tiny models).
        configs: Configuration names, run in this order (``reference`` first when a ratio is wanted).
        resolution: Image side in pixels.
        grad_steps: Steps with gradient (``None``: the family's); more than the family's denoising steps add steps.
        iters: Measured iterations per configuration.
        warmup: Iterations run first and not measured.
        dtype: The ``default`` configuration's dtype (``auto``: bf16 on CUDA, fp32 elsewhere).
        gradient_checkpointing: Measure ``default`` (and ``fast``) with ``--gradient-checkpointing`` (a lever, alone).
        compile: Measure them with ``--compile`` (a lever, alone; the compile time is reported).
        device: Torch device (``None``: cuda, else mps, else cpu).
        similarity: For a model folder: where the similarity networks are; ``None`` for a named backbone.
        tiny_vae: For a model folder: the fast loss's ``AutoencoderTiny`` (``None``: the family's Hub id).
        isolate: Run each configuration in a fresh process (so each peak memory is its own).
    """

    model: str = "sd-turbo"
    configs: tuple[str, ...] = ("reference", "default")
    resolution: int = 512
    grad_steps: int | None = None
    iters: int = 5
    warmup: int = 1
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    device: str | None = None
    similarity: SimilaritySettings | None = None
    tiny_vae: str | None = None
    isolate: bool = True

    def __post_init__(self):
        self.device = self.device or default_device()
        unknown = [c for c in self.configs if c not in CONFIGURATIONS]
        if unknown or not self.configs:
            raise ValueError(f"unknown benchmark configuration(s) {unknown}; known: {', '.join(CONFIGURATIONS)}")
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(f"iters must be >= 1 and warmup >= 0, got {self.iters} and {self.warmup}")
        if self.resolution < 64 or self.resolution % 64:
            raise ValueError(f"resolution must be a multiple of 64, got {self.resolution}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if "fast" in self.configs and self.similarity is None:
            check_tiny_vae(self.model)
        optim_settings(self.model, self)  # checked now rather than in a worker process


class BenchError(RuntimeError):
    """A configuration failed in its worker process; the message ends with the worker's last error line."""


def run_bench(settings: BenchSettings) -> dict:
    """Run every configuration of ``settings``; returns the settings, the device and one row per configuration (with
    ``speedup`` and ``memory_ratio`` against ``reference`` when it ran)."""
    rows = [_run_isolated(settings, name) if settings.isolate else _run(settings, name) for name in settings.configs]
    reference = next((r for r in rows if r["config"] == "reference"), None)
    for row in rows:
        if reference is not None:
            row["speedup"] = reference["seconds_per_iteration"] / row["seconds_per_iteration"]
            peak, ref_peak = row["peak_memory_gb"], reference["peak_memory_gb"]
            row["memory_ratio"] = peak / ref_peak if peak and ref_peak else None
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "settings": {**dataclasses.asdict(settings), "dtype": resolve_dtype(settings.dtype, settings.device)},
        "device": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def _run(settings: BenchSettings, name: str) -> dict:
    configuration = CONFIGURATIONS[name]
    if name != "reference":  # siso's configurations take the chosen dtype and lever
        memory = dataclasses.replace(configuration.memory, gradient_checkpointing=settings.gradient_checkpointing)
        configuration = dataclasses.replace(
            configuration, dtype=settings.dtype, memory=memory, compile=settings.compile
        )
        name += " + checkpointing" if settings.gradient_checkpointing else ""
        name += " + compile" if settings.compile else ""
    row = run_configuration(settings.model, settings, name, configuration)
    if settings.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _run_isolated(settings: BenchSettings, name: str) -> dict:
    """`_run` in a fresh process: its peak memory is its own, not what an earlier configuration left allocated."""
    spec = json.dumps({"settings": dataclasses.asdict(settings), "config": name})
    env = worker_environment(CONFIGURATIONS[name])
    proc = subprocess.run([sys.executable, "-m", "siso.bench", spec], capture_output=True, text=True, env=env)
    if proc.returncode < 0:  # killed: on Linux, SIGKILL is most often the out-of-memory killer
        raise BenchError(
            f"benchmark configuration {name!r} was killed (signal {-proc.returncode}); if by the system for memory, "
            "try --gradient-checkpointing or a smaller --resolution"
        )
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise BenchError(f"benchmark configuration {name!r} failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_environment(configuration: Configuration) -> dict[str, str]:
    """The environment of a configuration's worker process: this one's, except that a configuration without siso's
    huge-page default (``reference``) gets the setting the environment had before siso set it (`siso.pages`)."""
    env = dict(os.environ)
    if not configuration.huge_pages:
        env[pages.ENV] = pages.USER_SETTING or "0"  # (unset, `import siso` in the worker would set it again)
    return env


def _worker(spec: str) -> None:
    data = json.loads(spec)
    values = data["settings"]
    if values["similarity"] is not None:
        values["similarity"] = SimilaritySettings(**values["similarity"])
    values["configs"] = tuple(values["configs"])
    print(json.dumps(_run(BenchSettings(**{**values, "isolate": False}), data["config"])))


def _fmt(value, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def report(result: dict) -> str:
    """The benchmark as Markdown: one row per configuration, then seconds by part."""
    s = result["settings"]
    lines = [
        f"siso bench: {s['model']}, {s['resolution']} px, {result['device']} ({result['threads']} threads), "
        f"torch {result['torch']}, {s['iters']} iterations after {s['warmup']} warm-up",
        "",
        "| config | dtype | s/iter (min-max) | CPU s/iter (in kernel) | peak memory | GFLOP/iter | TFLOP/s | "
        "share of peak | first image | vs reference: speed, memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        memory = "n/a" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']})"
        ratio = "" if "speedup" not in r else f"{r['speedup']:.2f}x, {_fmt(r['memory_ratio'], '.2f', 'x')}"
        kernel = r.get("kernel_cpu_seconds_per_iteration")
        cpu = f"{r['cpu_seconds_per_iteration']:.3f}" + ("" if kernel is None else f" ({kernel:.1f})")
        lines.append(
            f"| {r['config']} | {r['dtype']} | {r['seconds_per_iteration']:.3f} ({r['seconds_min']:.3f}-"
            f"{r['seconds_max']:.3f}) | {cpu} | {memory} | "
            f"{r['flops_per_iteration'] / 1e9:.1f} | {r['achieved_tflops']:.3f} | "
            f"{_fmt(r['share_of_peak'], '.0%') if r['share_of_peak'] is not None else 'unknown'} | "
            f"{r['first_image_seconds']:.1f} s | {ratio} |"
        )
    for r in result["rows"]:
        if r.get("compile_seconds") is not None:
            lines += ["", f"`{r['config']}`: the first iteration took {r['compile_seconds']:.1f} s more (compiling)."]
    if any(r.get("loss", "paper") != "paper" for r in result["rows"]):
        lines += [
            "",
            "`fast` is a different loss from the paper's: a tiny VAE decoder (TAESD) scores the images and DINOv2 sees "
            "224 px (final images still use the full VAE). Its effect on quality is not measured here.",
        ]
    counted = [r for r in result["rows"] if r.get("page_faults_per_iteration") is not None]
    if counted:
        lines += [
            "",
            "Page faults per iteration (each maps in 4 KiB of fresh memory, or 2 MiB with huge pages; the kernel CPU "
            "seconds above are mostly these): "
            + ", ".join(f"{r['config']} {r['page_faults_per_iteration'] / 1e6:.2f} M" for r in counted)
            + ".",
        ]
    lines += [
        "",
        "Transparent huge pages for tensors over 2 MiB (`siso.pages`; the reference keeps the environment's own "
        "setting, which PyTorch leaves off): "
        + ", ".join(f"{r['config']} {'on' if r.get('huge_pages') else 'off'}" for r in result["rows"])
        + ".",
    ]
    lines += _parts_table(
        "Seconds per iteration by part (median; forward + backward):", result["rows"], "parts_seconds", ".3f"
    )
    lines += _parts_table(
        "CPU seconds in the kernel per iteration by part (median; mostly page faults):",
        result["rows"],
        "parts_kernel_seconds",
        ".2f",
    )
    return "\n".join(lines) + "\n"


def _parts_table(title: str, rows: list[dict], key: str, spec: str) -> list[str]:
    """A Markdown table of each row's ``key`` (seconds by part), or nothing if no row has it."""
    counted = [r for r in rows if r.get(key)]
    if not counted:
        return []
    lines = ["", title, "", "| config | " + " | ".join(PARTS) + " |", "|---|" + "---|" * len(PARTS)]
    return lines + [f"| {r['config']} | " + " | ".join(f"{r[key][p]:{spec}}" for p in PARTS) + " |" for r in counted]


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
