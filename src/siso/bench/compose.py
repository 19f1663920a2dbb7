"""``compose-saved``: what drawing saved subjects together costs, and what a polish iteration costs
(`siso.compose.regional`, `siso.runs.compose`).

K saved subjects are K LoRA adapters on one backbone, as ``siso generate --lora A --box .. --lora B --box ..`` loads
them (`siso.compose.saved.adapter_names`, in the backbone's dtype, frozen), each in its default slot
(`siso.compose.default_slots`: side by side over the middle 80 % of the height, so the bare pass is needed above and
below them). Their weights are random and small: what the passes cost does not depend on them, and the images stay
finite at real size. Measured in one process, after the backbone, the similarity networks and the composed loss are
built:

1. The images, taken in turn so that both meet the same load, ``warmup + iters`` of each: the single-subject image
   ``siso generate --lora A`` draws (the stock pipeline's call, `siso.backbones.Backbone.generate`, with only the
   first adapter active) and the composed image (`siso.compose.regional.RegionalSampler.generate`: K + 1 denoiser
   passes a step). Median seconds and CPU seconds, and the denoiser passes, of each.
2. The polish (``--polish``): the composed loss (each subject's identity on its box, leakage, presence; built as a
   composition's polish builds it, while the backbone is bare) optimizing every subject's adapter at once through the
   regional forward, timed as every configuration's loop is (`siso.bench.loop`).

The polish is reported against ``default``'s single-subject learning iteration (`siso.bench.run_bench`); the images
against each other here.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack

import torch

from siso.backbones import Backbone
from siso.bench.loop import loop_figures, run_loop
from siso.bench.measure import Configuration, bench_spec, build_models
from siso.compose import subject_names
from siso.compose.regional import EDGE, RegionalSampler
from siso.compose.saved import adapter_names
from siso.config import LoraSettings, SisoConfig
from siso.lora import adapter_parameters, add_lora
from siso.runs.compose import polishing
from siso.runs.memory import PeakMemory
from siso.runs.objective import objective as run_objective

# The spread of the adapters' random B matrices (A keeps peft's initialisation): a small change to the model.
ADAPTER_SCALE = 0.01


def run_compose_saved(model: str, settings, name: str, configuration: Configuration, subjects: int) -> dict:
    """Build ``model`` under ``configuration`` (called ``name``) with ``subjects`` saved subjects' adapters, time the
    single-subject and the composed images, then ``settings.warmup + settings.iters`` polish iterations (``settings``:
    a `siso.bench.BenchSettings`).

    Returns:
        A row of the report, as `siso.bench.measure.run_configuration`'s (the polish's iterations), with
        ``composition``: the adapters, their boxes, and each image's figures (``lora_image``, ``composed_image``) and
        their ratio (``vs_lora_image``). ``first_image_seconds`` is the time to the first composed image.
    """
    start = time.perf_counter()
    with ExitStack() as polish:  # a composition's polish: every subject's adapter trainable until the figures
        with PeakMemory(settings.device) as peak:
            models, similarity, dtype, _ = build_models(model, settings, configuration)
            spec = bench_spec(model, settings, configuration, subjects, similarity, dtype)
            backbone, config = models.loaded, spec.config
            side = backbone.resolution
            boxes = [subject.box for subject in spec.subjects]
            pixels = [box.pixels(side, side) for box in boxes]
            loss_fn, _ = run_objective(models, config, spec.subjects, pixels, subject_names([None] * subjects))
            adapters = add_saved_adapters(backbone, config.lora, subjects)
            sampler = RegionalSampler(backbone, adapters, boxes)
            images, first_image = time_images(sampler, config, settings, start)
            draw, modules = polish.enter_context(polishing(sampler, config))
            loop = run_loop(backbone, config, loss_fn, loss_fn, draw, start, modules=modules)
        figures = loop_figures(loop, backbone, config, loss_fn, draw, settings, peak)
    single, composed = images["lora_image"], images["composed_image"]
    opt = config.optim
    composition = {
        "adapters": subjects,
        "rank": config.lora.rank,
        "boxes": [str(box) for box in boxes],
        "edge": EDGE,
        "steps": opt.num_inference_steps,
        **images,
        "vs_lora_image": {key: composed[key] / single[key] for key in ("seconds", "cpu_seconds", "denoiser_passes")},
    }
    return {
        "config": name,
        "subjects": subjects,
        "dtype": dtype,
        **figures,
        "first_image_seconds": first_image,
        "loss": "paper",
        "inversion": None,
        "composition": composition,
    }


def add_saved_adapters(backbone: Backbone, lora: LoraSettings, count: int) -> list[str]:
    """``count`` LoRA adapters of ``lora``'s shape on ``backbone``, named as saved subjects are loaded
    (`siso.compose.saved.adapter_names`), in the backbone's dtype and frozen, as a stock ``load_lora_weights`` leaves
    them; B is random (`ADAPTER_SCALE`), each adapter's from its own seed. Returns their names."""
    adapters = adapter_names(count)
    for k, adapter in enumerate(adapters):
        generator = torch.Generator().manual_seed(k)
        for module in add_lora(backbone, lora, adapter=adapter).values():
            for key, param in adapter_parameters(module, adapter).items():
                if "lora_B" in key:
                    param.data = torch.randn(param.shape, generator=generator).mul_(ADAPTER_SCALE)
                param.data = param.data.to(backbone.device, backbone.dtype)
                param.requires_grad_(False)
    return adapters


def time_images(sampler: RegionalSampler, config: SisoConfig, settings, start: float) -> tuple[dict, float]:
    """The single-subject image (only the first adapter active, `Backbone.generate`) and the composed image
    (``sampler.generate``), in turn, ``settings.warmup + settings.iters`` times each, at the run's prompt, seed,
    steps and guidance.

    Returns:
        Per image (``lora_image``, ``composed_image``): median ``seconds`` and ``cpu_seconds`` over the measured ones,
        ``seconds_min``, ``seconds_max`` and its ``denoiser_passes``; and the seconds from ``start`` to the end of
        the first composed image.
    """
    backbone, opt = sampler.backbone, config.optim
    passes = []
    hook = backbone.denoiser.register_forward_pre_hook(lambda module, args: passes.append(1))

    def timed(draw) -> tuple[float, float, int]:
        passes.clear()
        began, began_cpu = time.perf_counter(), time.process_time()
        draw(config.train_prompt, opt.seed, opt.num_inference_steps, opt.guidance_scale)  # a PIL image: synchronized
        return time.perf_counter() - began, time.process_time() - began_cpu, len(passes)

    runs: dict[str, list[tuple[float, float, int]]] = {"lora_image": [], "composed_image": []}
    first_image = None
    try:
        for _ in range(settings.warmup + settings.iters):
            with sampler.switch.only(sampler.adapters[0]):
                runs["lora_image"].append(timed(backbone.generate))
            runs["composed_image"].append(timed(sampler.generate))
            first_image = first_image or time.perf_counter() - start
    finally:
        hook.remove()
    images = {}
    for image, timings in runs.items():
        measured = timings[settings.warmup :]
        images[image] = {
            "seconds": statistics.median(t[0] for t in measured),
            "seconds_min": min(t[0] for t in measured),
            "seconds_max": max(t[0] for t in measured),
            "cpu_seconds": statistics.median(t[1] for t in measured),
            "denoiser_passes": measured[-1][2],
        }
    return images, first_image
