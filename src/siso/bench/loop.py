"""The timed SISO loop of one benchmark configuration: its iterations with the part timers on (`run_loop`), then the
row's figures (`loop_figures`: seconds, CPU seconds, FLOPs, by part), for every configuration that runs the loop
(`siso.bench.measure`, and `siso.bench.compose`'s polish)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from siso.backbones import Backbone
from siso.bench.timing import _RUSAGE, PARTS, PartTimer, count_flops, device_peak_tflops
from siso.config import SisoConfig
from siso.optimize import SisoResult, optimize_lora
from siso.runs.memory import PeakMemory, allocator


@dataclass
class LoopRun:
    """A finished timed loop: the loop's result, its part timer, the prompt encodings it made (the reference's, every
    iteration) and the seconds from the configuration's start to its first image."""

    result: SisoResult
    timer: PartTimer
    encodings: int
    first_image_seconds: float


def run_loop(
    backbone: Backbone,
    config: SisoConfig,
    objective: torch.nn.Module,
    loss_fn: torch.nn.Module,
    draw: Callable[[dict], torch.Tensor],
    start: float,
    reencode_prompt: bool = False,
    loss_vae: torch.nn.Module | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> LoopRun:
    """Run `siso.optimize.optimize_lora` as ``config`` says with the part timers on.

    Args:
        backbone: The backbone.
        config: The run's settings (its ``optim`` from `siso.bench.measure.optim_settings`: never stopping early).
        objective: Image -> loss terms (the similarity loss, or an edit's objective around it).
        loss_fn: The similarity loss whose networks are timed as parts.
        draw: Text conditioning -> image with gradients.
        start: `time.perf_counter` when the configuration started (for the time to the first image).
        reencode_prompt: Encode the prompt in every iteration (the reference code's way).
        loss_vae: The fast loss's tiny decoder, or ``None``.
        modules: The modules whose trainable LoRA weights are optimized (a polish); ``None``: a new adapter.
    """
    timer = PartTimer(backbone, loss_fn, loss_vae)
    # The backward pass starts at the whole objective's loss (an edit's adds terms to the similarity's).
    hook = objective.register_forward_hook(lambda module, args, terms: timer.backward_started(terms["loss"]))
    encodings = 0
    optim = config.optim

    def render(cond):
        nonlocal encodings
        timer.new_iteration()
        if reencode_prompt:
            encodings += 1
            cond = backbone.encode_prompt(config.train_prompt, optim.guidance_scale)
        return draw(cond)

    first_image: list[float] = []

    def callback(iteration, image, terms):
        if not first_image:
            first_image.append(time.perf_counter() - start)

    try:
        result = optimize_lora(
            backbone, render, objective, config, callback, progress=False, loss_vae=loss_vae, modules=modules
        )
        timer.new_iteration()
    finally:
        timer.remove()
        hook.remove()
    return LoopRun(result, timer, encodings, first_image[0])


def loop_figures(
    loop: LoopRun,
    backbone: Backbone,
    config: SisoConfig,
    objective: torch.nn.Module,
    draw: Callable[[dict], torch.Tensor],
    settings,
    peak: PeakMemory,
    reencode_prompt: bool = False,
    loss_vae: torch.nn.Module | None = None,
) -> dict:
    """The row's figures of a finished loop (``settings``: a `siso.bench.BenchSettings`; ``peak``: the
    configuration's peak memory): the median over the measured iterations, its FLOPs (one more iteration, counted),
    its parts.

    Raises:
        KeyboardInterrupt: the loop ended on Ctrl-C (it keeps its best; a benchmark keeps nothing of it).
    """
    result, timer = loop.result, loop.timer
    if not result.complete:
        raise KeyboardInterrupt
    measured = [h["seconds"] for h in result.history[settings.warmup : settings.warmup + settings.iters]]
    flops = count_flops(backbone, draw, objective, config, reencode_prompt, loss_vae)
    seconds = statistics.median(measured)
    parts = timer.iteration_parts(settings.warmup)
    cpu_seconds, kernel_seconds, faults = parts.pop("cpu"), parts.pop("kernel"), parts.pop("faults")
    kernel_parts = {part: parts.pop(f"kernel {part}") for part in PARTS}
    parts["other"] = max(0.0, seconds - sum(parts.values()))
    kernel_parts["other"] = max(0.0, kernel_seconds - sum(kernel_parts.values()))
    peak_tflops = device_peak_tflops(backbone.device)
    achieved = flops / seconds / 1e12
    return {
        "objective": type(objective).__name__,
        "loss_terms": sorted(key for key in result.history[0] if key not in ("iteration", "seconds")),
        "seconds_per_iteration": seconds,
        "seconds_min": min(measured),
        "seconds_max": max(measured),
        "cpu_seconds_per_iteration": cpu_seconds,
        # Page faults bring in fresh memory: on a CPU, what allocating costs beyond the arithmetic.
        "kernel_cpu_seconds_per_iteration": kernel_seconds if _RUSAGE else None,
        "page_faults_per_iteration": faults if _RUSAGE else None,
        "peak_memory_gb": peak.peak / 1e9 if peak.kind else None,
        "peak_memory_kind": peak.kind,
        "allocator": allocator(),
        "flops_per_iteration": flops,
        "achieved_tflops": achieved,
        "share_of_peak": achieved / peak_tflops if peak_tflops else None,
        "first_image_seconds": loop.first_image_seconds,
        "parts_seconds": parts,
        # CPU seconds in the kernel by part (all threads; 0 where unknown): where fresh memory is faulted in.
        "parts_kernel_seconds": kernel_parts if _RUSAGE else None,
        # The first iteration's time beyond a measured one's: the compile time (and first-call costs).
        "compile_seconds": result.history[0]["seconds"] - seconds if config.accel.compile else None,
        "prompt_encodings": loop.encodings,
        "iterations": len(result.history),
    }
