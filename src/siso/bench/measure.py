"""One benchmark configuration: build, run the real SISO loop, and time it, as a whole and by part.

The loop is `siso.optimize.optimize_lora`, the one `siso generate` runs. The configurations differ only in what a
user can choose (dtype, memory options) plus, for ``reference``, what the SISO reference code does that siso does not
(the prompt re-encoded every iteration).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode

from siso.backbones import TORCH_DTYPES, Backbone, family_defaults, load_backbone, resolve_dtype
from siso.config import FastSettings, MemorySettings, OptimSettings, SimilaritySettings, SisoConfig, with_defaults
from siso.fast import load_tiny_vae, tiny_vae_name
from siso.lean import lean_graph
from siso.losses import ClipImageEmbedding, DinoEmbedding, SimilarityLoss
from siso.memory import PeakMemory
from siso.optimize import optimize_lora
from siso.pages import huge_pages_requested
from siso.upsample import fused_upsampling

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity) of accelerators we know; others are reported as unknown.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}
PARTS = ("denoiser", "vae decode", "dino", "ir", "optimizer step", "other")
_RUSAGE = sys.platform != "win32"  # getrusage: Unix only


def kernel_counters() -> dict[str, float]:
    """This process's CPU seconds in the kernel (``kernel``) and page faults (``faults``), both 0 where unknown
    (Windows). Fresh memory is faulted in page by page (4 KiB, or 2 MiB with huge pages: `siso.pages`): on a CPU this
    is what allocating costs beyond the arithmetic."""
    if not _RUSAGE:
        return {"kernel": 0.0, "faults": 0.0}
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"kernel": usage.ru_stime, "faults": float(usage.ru_minflt)}


@dataclass
class Configuration:
    """What differs between benchmark configurations.

    Attributes:
        dtype: ``fp32``, ``bf16``, ``fp16`` or ``auto``.
        memory: The memory options.
        reencode_prompt: Encode the prompt in every iteration (the reference code), instead of once.
        channels_last_vae: Run the VAE in channels-last layout while optimizing (siso's default).
        lean: Frozen convolutions keep no input for backward, GroupNorm -> SiLU one tensor (siso's default).
        fuse_upsampling: Upsample + convolution as one transposed convolution (`siso.upsample`, siso's default).
        fast: The fast loss (`siso.fast`): a tiny VAE decoder for the loss, DINOv2 at 224 px. A different loss.
        huge_pages: Run with siso's huge-page default (`siso.pages`); otherwise with the environment's own setting
            (PyTorch's default: off). Process-wide, so it applies only where the configuration runs in a process of
            its own (`siso bench` does that).
    """

    dtype: str = "auto"
    memory: MemorySettings = field(default_factory=MemorySettings)
    reencode_prompt: bool = False
    channels_last_vae: bool = True
    lean: bool = True
    fuse_upsampling: bool = True
    fast: bool = False
    compile: bool = False
    huge_pages: bool = True


CONFIGURATIONS = {
    # The SISO reference code: fp32, the prompt re-encoded every iteration, every model resident on the device, the
    # stock memory layout, autograd graph, C allocator settings and page size.
    "reference": Configuration(
        dtype="fp32",
        memory=MemorySettings(offload_text_encoders=False, release_freed_memory=False),
        reencode_prompt=True,
        channels_last_vae=False,
        lean=False,
        fuse_upsampling=False,
        huge_pages=False,
    ),
    # siso's defaults.
    "default": Configuration(),
    # siso's defaults with the opt-in fast loss: not the paper's loss.
    "fast": Configuration(fast=True),
}


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


def _loss_and_backbone(model: str, settings, configuration: Configuration, subject: Image.Image):
    """The backbone, the loss, the dtype used and (for the fast loss) the tiny VAE decoder."""
    device = settings.device
    dtype = resolve_dtype(configuration.dtype, device)
    loss_vae = None
    if settings.similarity is None:  # real size: the published architectures with random weights
        from siso.bench.architectures import build_backbone, build_similarity, build_tiny_vae

        backbone = build_backbone(model, device, TORCH_DTYPES[dtype], settings.resolution)
        nets = build_similarity(device, TORCH_DTYPES[dtype])
        side = FastSettings(configuration.fast).similarity_for(SimilaritySettings()).dino_resolution
        dino = DinoEmbedding.from_network(nets["dino"], side)
        loss_fn = SimilarityLoss.from_networks(
            {"dino": dino, "ir": ClipImageEmbedding.from_network(nets["ir"])}, subject
        )
        if configuration.fast:
            loss_vae = build_tiny_vae(model, device, TORCH_DTYPES[dtype])
    else:  # a model folder and similarity networks on disk (the tests' tiny ones)
        backbone = load_backbone(model, dtype, device, settings.resolution, configuration.memory.quantize)
        similarity = FastSettings(configuration.fast).similarity_for(settings.similarity)
        loss_fn = SimilarityLoss(similarity, subject, backbone.device, backbone.dtype)
        if configuration.fast:
            loss_vae = load_tiny_vae(tiny_vae_name(FastSettings(True, settings.tiny_vae), model), backbone)
    return backbone, loss_fn, dtype, loss_vae


def optim_settings(model: str, settings) -> OptimSettings:
    """The loop's settings: the family's, run for ``warmup + iters`` full iterations plus a last one (which takes no
    optimizer step and so builds no graph: run, not measured), never stopping early. ``grad_steps`` beyond the
    family's denoising steps add steps: all of them then keep their graph (SD-Turbo with ``--grad-steps 3``: 3 steps).

    Raises:
        ValueError: settings the loop refuses.
    """
    defaults = family_defaults(model).get("optim", {})
    steps = defaults.get("num_inference_steps", OptimSettings.num_inference_steps)
    return with_defaults(
        OptimSettings,
        defaults,
        max_iters=settings.warmup + settings.iters + 1,
        patience=settings.warmup + settings.iters + 2,
        min_improvement=0.0,
        grad_steps=settings.grad_steps,
        num_inference_steps=max(steps, settings.grad_steps or 0),
    )


def run_configuration(model: str, settings, name: str, configuration: Configuration) -> dict:
    """Build ``model`` under ``configuration`` (called ``name``) and run ``settings.warmup + settings.iters``
    iterations (``settings``: a `siso.bench.BenchSettings`).

    Returns:
        The figures of one row of the report (seconds are wall time; ``cpu_seconds`` is the process's CPU time).
    """
    start = time.perf_counter()
    subject = Image.new("RGB", (512, 512), (200, 120, 40))
    with PeakMemory(settings.device) as peak:
        backbone, loss_fn, dtype, loss_vae = _loss_and_backbone(model, settings, configuration, subject)
        optim = optim_settings(model, settings)
        config = SisoConfig(
            model=model,
            train_prompt="a photo of a dog",
            dtype=dtype,
            optim=optim,
            memory=configuration.memory,
            compile=configuration.compile,
        )
        timer = PartTimer(backbone, loss_fn, loss_vae)
        encodings = 0

        def conditioning(cond):
            nonlocal encodings
            if configuration.reencode_prompt:
                encodings += 1
                return backbone.encode_prompt(config.train_prompt, optim.guidance_scale)
            return cond

        def render(cond):
            timer.new_iteration()
            generator = torch.Generator().manual_seed(optim.seed)
            return backbone.sample(
                conditioning(cond), generator, optim.num_inference_steps, optim.grad_steps, optim.guidance_scale
            )

        def objective(image):
            terms = loss_fn(image)
            timer.backward_started(terms["loss"])
            return terms

        first_image: list[float] = []

        def callback(iteration, image, terms):
            if not first_image:
                first_image.append(time.perf_counter() - start)

        result = optimize_lora(
            backbone,
            render,
            objective,
            config,
            callback=callback,
            progress=False,
            channels_last_vae=configuration.channels_last_vae,
            lean=configuration.lean,
            loss_vae=loss_vae,
            fuse_upsampling=configuration.fuse_upsampling,
        )
        timer.new_iteration()
        timer.remove()
    if not result.complete:  # the loop keeps its best on Ctrl-C; a benchmark keeps nothing of it
        raise KeyboardInterrupt
    measured = [h["seconds"] for h in result.history[settings.warmup : settings.warmup + settings.iters]]
    flops = count_flops(
        backbone, loss_fn, config, configuration.reencode_prompt, loss_vae, configuration.fuse_upsampling
    )
    seconds = statistics.median(measured)
    parts = timer.iteration_parts(settings.warmup)
    cpu_seconds, kernel_seconds, faults = parts.pop("cpu"), parts.pop("kernel"), parts.pop("faults")
    kernel_parts = {part: parts.pop(f"kernel {part}") for part in PARTS}
    parts["other"] = max(0.0, seconds - sum(parts.values()))
    kernel_parts["other"] = max(0.0, kernel_seconds - sum(kernel_parts.values()))
    peak_tflops = device_peak_tflops(backbone.device)
    achieved = flops / seconds / 1e12
    return {
        "config": name,
        "dtype": dtype,
        "seconds_per_iteration": seconds,
        "seconds_min": min(measured),
        "seconds_max": max(measured),
        "cpu_seconds_per_iteration": cpu_seconds,
        # Page faults bring in fresh memory: on a CPU, what allocating costs beyond the arithmetic.
        "kernel_cpu_seconds_per_iteration": kernel_seconds if _RUSAGE else None,
        "page_faults_per_iteration": faults if _RUSAGE else None,
        "peak_memory_gb": peak.peak / 1e9 if peak.kind else None,
        "peak_memory_kind": peak.kind,
        "huge_pages": huge_pages_requested(),
        "flops_per_iteration": flops,
        "achieved_tflops": achieved,
        "share_of_peak": achieved / peak_tflops if peak_tflops else None,
        "first_image_seconds": first_image[0],
        "parts_seconds": parts,
        # CPU seconds in the kernel by part (all threads; 0 where unknown): where fresh memory is faulted in.
        "parts_kernel_seconds": kernel_parts if _RUSAGE else None,
        # The first iteration's time beyond a measured one's: the compile time (and first-call costs).
        "compile_seconds": result.history[0]["seconds"] - seconds if configuration.compile else None,
        "loss": "fast (not the paper's)" if configuration.fast else "paper",
        "prompt_encodings": encodings,
        "iterations": len(result.history),
    }


def count_flops(
    backbone: Backbone,
    loss_fn: SimilarityLoss,
    config: SisoConfig,
    encode: bool,
    loss_vae: torch.nn.Module | None = None,
    fuse_upsampling: bool = True,
) -> float:
    """FLOPs of one iteration (prompt encoding if ``encode``, render, loss, backward; decoding with ``loss_vae`` when
    given; upsampling fused as the loop does if ``fuse_upsampling``), counted by torch's `FlopCounterMode` (which
    does not count the CPU's flash attention: on a CPU the figure is a little low)."""
    opt = config.optim
    with torch.no_grad(), FlopCounterMode(display=False) as encoding:
        cond = backbone.encode_prompt(config.train_prompt, opt.guidance_scale)
    if config.memory.offload_text_encoders:  # out again, as in the loop (SDXL-Turbo's 2.8 GB did not fit at 24 GB)
        backbone.park_text_encoders()
    with contextlib.ExitStack() as stack:
        if loss_vae is not None:
            stack.enter_context(backbone.decoding_with(loss_vae))
        nets = (backbone.pipe.vae, backbone.denoiser)  # the decoder in use
        if fuse_upsampling:
            stack.enter_context(fused_upsampling(*nets))
        # The lean graph: the same FLOPs as the stock one, with siso's memory (the stock graph need not fit).
        stack.enter_context(lean_graph(*nets))
        iteration = stack.enter_context(FlopCounterMode(display=False))
        image = backbone.sample(
            cond, torch.Generator().manual_seed(0), opt.num_inference_steps, opt.grad_steps, opt.guidance_scale
        )
        loss_fn(image)["loss"].backward()
    backbone.denoiser.zero_grad(set_to_none=True)
    return float(iteration.get_total_flops() + (encoding.get_total_flops() if encode else 0))
