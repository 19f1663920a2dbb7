"""Timing a SISO iteration by part (`PartTimer`), counting its FLOPs (`count_flops`), and what the kernel spent."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode

from siso.accel import accelerated
from siso.backbones import Backbone
from siso.config import SisoConfig
from siso.losses import SimilarityLoss

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) of accelerators we know; others are reported as unknown.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}
PARTS = ("denoiser", "vae decode", "dino", "ir", "optimizer step", "other")
_RUSAGE = sys.platform != "win32"  # getrusage: Unix only


def kernel_counters() -> dict[str, float]:
    """This process's CPU seconds in the kernel (``kernel``) and page faults (``faults``), both 0 where unknown
    (Windows). Fresh memory is faulted in page by page: on a CPU this is what allocating costs beyond the arithmetic."""
    if not _RUSAGE:
        return {"kernel": 0.0, "faults": 0.0}
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"kernel": usage.ru_stime, "faults": float(usage.ru_minflt)}


def device_peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of a known GPU; None for CPUs and GPUs not in `PEAK_TFLOPS`."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


class PartTimer:
    """Wall time, and CPU time in the kernel, per part of an iteration, from module hooks (forward) and gradient
    hooks at the parts' boundaries (backward: the similarity networks' backward runs first, then the VAE decoder's,
    then the denoiser's).

    Synchronizes the device at each boundary, so timings are per part but the iteration is a little slower.
    """

    def __init__(self, backbone: Backbone, loss_fn: SimilarityLoss, loss_vae: torch.nn.Module | None = None):
        """``loss_vae``: the decoder the loop decodes with instead of the backbone's (the fast loss's)."""
        self.device = backbone.device
        self.totals = dict.fromkeys(PARTS, 0.0)  # "other" stays 0: it is what the parts leave of an iteration
        self.kernel_totals = dict.fromkeys(PARTS, 0.0)  # CPU seconds in the kernel (page faults), the same way
        self.handles = []
        self._marks: list[tuple[str, tuple[float, float]]] = []
        modules = {"denoiser": backbone.denoiser, "vae decode": (loss_vae or backbone.pipe.vae).decoder}
        modules.update({name: net.net for name, net in loss_fn.nets.items()})
        for name, module in modules.items():
            self.handles.append(module.register_forward_pre_hook(self._forward_start(name), with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._forward_end(name), with_kwargs=True))
        self.handles.append(register_optimizer_step_pre_hook(self._step_started))
        self.handles.append(register_optimizer_step_post_hook(lambda *a: self._stop("optimizer step")))
        self._open: dict[str, tuple[float, float]] = {}
        self.per_iteration: list[dict] = []

    def _step_started(self, *args) -> None:
        self.end_iteration()  # the backward pass (and the gradient clipping) ended just before the step
        self._start("optimizer step")

    def new_iteration(self) -> None:
        """Close the previous iteration's figures (call when an iteration starts, and once after the last)."""
        self.end_iteration()
        self.per_iteration.append(
            {
                **self.totals,
                **{f"kernel {part}": seconds for part, seconds in self.kernel_totals.items()},
                **kernel_counters(),
                "cpu": time.process_time(),
                "wall": time.perf_counter(),
            }
        )

    def iteration_parts(self, first: int) -> dict[str, float]:
        """Median seconds per part, CPU seconds in the kernel per part (``kernel <part>``), CPU seconds (``cpu``),
        CPU seconds in the kernel (``kernel``) and page faults (``faults``), over iterations ``first`` to the last
        but one."""
        keys = (*PARTS, *(f"kernel {part}" for part in PARTS), "cpu", "kernel", "faults")
        spans = [{k: after[k] - before[k] for k in keys} for before, after in itertools.pairwise(self.per_iteration)]
        spans = spans[first:-1] or spans  # without the last iteration (no backward, no step)
        return {key: statistics.median(span[key] for span in spans) for key in keys}

    def _now(self) -> tuple[float, float]:
        """Wall time and this process's CPU seconds in the kernel."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter(), kernel_counters()["kernel"]

    def _add(self, part: str, start: tuple[float, float], end: tuple[float, float]) -> None:
        self.totals[part] += end[0] - start[0]
        self.kernel_totals[part] += end[1] - start[1]

    def _start(self, part: str) -> None:
        self._open[part] = self._now()

    def _stop(self, part: str) -> None:
        self._add(part, self._open.pop(part), self._now())

    def _forward_start(self, part):
        def hook(module, args, kwargs):
            self._start(part)
            inputs = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
            if inputs and part != "denoiser":  # its backward ends where it is given gradient-carrying inputs
                inputs[0].register_hook(lambda grad: self._mark(part))

        return hook

    def _forward_end(self, part):
        def hook(module, args, kwargs, output):
            self._stop(part)

        return hook

    def backward_started(self, loss: torch.Tensor) -> None:
        """Call on the loss before ``backward()`` (the objective does): starts the backward clock."""
        if loss.requires_grad:
            loss.register_hook(lambda grad: self._mark("start"))

    def _mark(self, part: str) -> None:
        self._marks.append((part, self._now()))

    def end_iteration(self) -> None:
        """Attribute the backward pass between the recorded boundaries (call after ``backward()``)."""
        if not self._marks:
            return
        end = self._now()
        previous = self._marks[0][1]
        for part, moment in self._marks[1:]:
            self._add(part, previous, moment)
            previous = moment
        self._add("denoiser", previous, end)  # after the VAE's input: the denoiser's backward and the LoRA's
        self._marks.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def count_flops(
    backbone: Backbone,
    render: Callable[[dict], torch.Tensor],
    objective: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    config: SisoConfig,
    encode: bool,
    loss_vae: torch.nn.Module | None = None,
) -> float:
    """FLOPs of one iteration (prompt encoding if ``encode``, ``render``, ``objective``, backward; decoding with
    ``loss_vae`` when given; run as ``config.accel`` says, eager), counted by torch's `FlopCounterMode` (which does
    not count the CPU's flash attention: on a CPU the figure is a little low)."""
    opt = config.optim
    with torch.no_grad(), FlopCounterMode(display=False) as encoding:
        cond = backbone.encode_prompt(config.train_prompt, opt.guidance_scale)
    if config.memory.offload_text_encoders:  # out again, as in the loop (SDXL-Turbo's 2.8 GB did not fit at 24 GB)
        backbone.park_text_encoders()
    # The lean graph: the same FLOPs as the stock one, with siso's memory (the stock graph need not fit).
    accel = dataclasses.replace(config.accel, lean_graph=True, compile=False)
    with accelerated(backbone, accel, loss_vae=loss_vae), FlopCounterMode(display=False) as iteration:
        objective(render(cond))["loss"].backward()
    backbone.denoiser.zero_grad(set_to_none=True)
    return float(iteration.get_total_flops() + (encoding.get_total_flops() if encode else 0))
