"""One benchmark configuration: build, run the real SISO loop, and time it, as a whole and by part.

The loop is `siso.optimize.optimize_lora`, the one `siso generate`, `siso edit` and `siso refine` run. The
configurations differ only in what a user can choose (dtype, memory options, the fast loss, editing, refining) and in
how the iterations run (`siso.config.ACCEL_PRESETS` of the same names), plus, for ``reference``, what the SISO
reference code does that siso does not (the prompt re-encoded every iteration). Any of them but ``edit`` and
``refine`` can score several subjects, each in its box (`siso.losses.CompositionLoss`), as ``siso generate`` does with
several ``--subject``.

Each configuration's run is described as every entry point describes one (`bench_spec`: a `siso.runs.spec.RunSpec`
with no run folder) and its loss is put together as every run's is (`siso.runs.objective.objective`; a refine's by
the refine run's own set-up, `siso.runs.refine.set_up`); the benchmark then times that run's loop itself, with its
timers on, instead of running it with `siso.runs.run.run`. An edit or a refine inverts its image first
(`siso.editing.invert_scene`), timed on its own. ``compose-saved`` (saved subjects drawn together, then polished) is
measured by `siso.bench.compose`; the timed loop itself is `siso.bench.loop`'s.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from siso.backbones import config_for, load_backbone
from siso.bench.loop import loop_figures, run_loop
from siso.compose import Subject, default_slots, subject_names
from siso.config import (
    AccelSettings,
    EditConfig,
    FastSettings,
    MemorySettings,
    OptimSettings,
    RefineConfig,
    SimilaritySettings,
    SisoConfig,
)
from siso.devices import TORCH_DTYPES, resolve_dtype
from siso.editing import invert_scene, prepare_scene
from siso.editing.edit import edit_objective
from siso.losses import ClipImageEmbedding, DinoEmbedding, LossNetworks, load_nets
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name
from siso.runs.jobs import EditJob, RefineJob
from siso.runs.memory import PeakMemory
from siso.runs.models import Models
from siso.runs.objective import objective as run_objective
from siso.runs.refine import set_up
from siso.runs.spec import RunSpec

# The configuration classes of the run kinds a configuration measures.
RUN_CONFIGS = {"learn": SisoConfig, "edit": EditConfig, "refine": RefineConfig, "compose": SisoConfig}


@dataclass
class Configuration:
    """What differs between benchmark configurations.

    Attributes:
        dtype: ``fp32``, ``bf16``, ``fp16`` or ``auto``.
        memory: The memory options.
        reencode_prompt: Encode the prompt in every iteration (the reference code), instead of once.
        accel: How the iterations run (`siso.config.AccelSettings`: the preset of the configuration's name).
        fast: The fast loss (`siso.losses.tiny_vae`): a tiny VAE decoder for the loss, DINOv2 at 224 px. A
            different loss.
        kind: The run it measures (`siso.runs.spec.RUN_KINDS`): ``learn`` (generate), ``edit`` (edit a photo,
            `siso.editing`: the photo is inverted first, timed apart, then each iteration denoises the inverted latent
            and adds the background term), ``refine`` (`siso.runs.refine`: an edit at the refine's strength of the
            subject's own region, adding the structure term) or ``compose`` (`siso.bench.compose`: saved subjects'
            adapters drawn together by region, `siso.compose.regional`, then polished through that forward).
        system_malloc: Run on the C library's own malloc, as the reference code does (its worker process gets no
            ``LD_PRELOAD``); otherwise on the allocator ``siso`` runs on (tcmalloc where installed,
            `siso.cli.startup`). Process-wide, so it applies only where the configuration runs in a process of its
            own (`siso bench` does that).
    """

    dtype: str = "auto"
    memory: MemorySettings = field(default_factory=MemorySettings)
    accel: AccelSettings = field(default_factory=AccelSettings)
    reencode_prompt: bool = False
    fast: bool = False
    system_malloc: bool = False
    kind: str = "learn"


CONFIGURATIONS = {
    # The SISO reference code: fp32, the prompt re-encoded every iteration, every model resident on the device, the
    # stock memory layout and autograd graph, the C library's malloc.
    "reference": Configuration(
        dtype="fp32",
        memory=MemorySettings(offload_text_encoders=False),
        accel=AccelSettings.preset("reference"),
        reencode_prompt=True,
        system_malloc=True,
    ),
    # siso's defaults.
    "default": Configuration(accel=AccelSettings.preset("default")),
    # siso's defaults with the opt-in fast loss: not the paper's loss.
    "fast": Configuration(accel=AccelSettings.preset("fast"), fast=True),
    # siso's defaults, editing a photo (`siso edit`): ReNoise inversion, then the edit loop.
    "edit": Configuration(accel=AccelSettings.preset("default"), kind="edit"),
    # siso's defaults, refining an image that shows the subject (`siso refine`): ReNoise inversion at the refine's
    # strength, then the loop with the background and structure terms.
    "refine": Configuration(accel=AccelSettings.preset("default"), kind="refine"),
    # siso's defaults, composing saved subjects (`siso generate --lora A --box .. --lora B --box ..`): each subject's
    # adapter in its region, K + 1 denoiser passes a step, then `--polish` iterations through that forward.
    "compose-saved": Configuration(accel=AccelSettings.preset("default"), kind="compose"),
}


def subject_photos(count: int) -> list[Image.Image]:
    """``count`` different 512 px photos of random pixels (what the loss costs does not depend on what they show)."""
    return [
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (512, 512, 3), dtype=np.uint8)) for k in range(count)
    ]


def build_models(model: str, settings, configuration: Configuration) -> tuple[Models, SimilaritySettings, str, object]:
    """The backbone and similarity networks of a configuration (`siso.runs.models.Models`), the similarity settings
    they stand for, the dtype used and (for the fast loss) the tiny VAE decoder."""
    device = settings.device
    dtype = resolve_dtype(configuration.dtype, device)
    loss_vae = None
    if settings.similarity is None:  # real size: the published architectures with random weights
        from siso.bench.architectures import build_backbone, build_similarity, build_tiny_vae

        backbone = build_backbone(model, device, TORCH_DTYPES[dtype], settings.resolution)
        built = build_similarity(device, TORCH_DTYPES[dtype])
        similarity = FastSettings(configuration.fast).similarity_for(SimilaritySettings())
        dino = DinoEmbedding(built["dino"], similarity.dino_resolution)
        nets, weights = {"dino": dino, "ir": ClipImageEmbedding(built["ir"])}, None
        if configuration.fast:
            loss_vae = build_tiny_vae(model, device, TORCH_DTYPES[dtype])
    else:  # a model folder and similarity networks on disk (the tests' tiny ones)
        backbone = load_backbone(model, dtype, device, settings.resolution, configuration.memory.quantize)
        similarity = FastSettings(configuration.fast).similarity_for(settings.similarity)
        nets, weights = load_nets(similarity, backbone.device, backbone.dtype)
        if configuration.fast:
            loss_vae = load_tiny_vae(tiny_vae_name(FastSettings(True, settings.tiny_vae), model), backbone)
    networks = LossNetworks(similarity, backbone.device, backbone.dtype, nets=(nets, weights))
    return Models(backbone, networks), similarity, dtype, loss_vae


def bench_spec(
    model: str, settings, configuration: Configuration, subjects: int, similarity: SimilaritySettings, dtype: str
) -> RunSpec:
    """The run a configuration measures, described as every entry point describes a run (`siso.runs.spec.RunSpec`,
    its settings merged with the family's by `siso.backbones.config_for`): learn ``subjects`` subjects (several side by
    side, each in its box: `siso.compose.default_slots`; a composition's, even one, in its slot), edit the bench's
    photo, or refine it (one subject, a dog, in the box of the middle half, as ``siso refine --box``); written nowhere
    (``out`` is ``None``: the benchmark times the loop, it keeps no run folder)."""
    photos = subject_photos(subjects)
    kind = configuration.kind
    slots = default_slots(subjects) if subjects > 1 or kind == "compose" else [None]
    chosen = [Subject(photo, box=slot) for photo, slot in zip(photos, slots, strict=True)]
    config = config_for(
        RUN_CONFIGS[kind],
        model,
        train_prompt="a photo of a dog",
        dtype=dtype,
        similarity=similarity,
        optim=optim_settings(model, settings, kind),
        memory=configuration.memory,
        fast=FastSettings(configuration.fast, settings.tiny_vae),
        accel=configuration.accel,
    )
    photo, mask = _photo_and_mask(settings.resolution)
    if kind == "edit":
        return RunSpec("edit", config, None, chosen, EditJob(photo, mask, "box"))
    if kind == "refine":
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = f"box {cols[0]},{rows[0]},{cols[-1] + 1},{rows[-1] + 1}"
        subject = Subject(photos[0], class_name="dog", region=mask)
        return RunSpec("refine", config, None, [subject], RefineJob(photo, sources=[box]))
    return RunSpec("learn", config, None, chosen)  # a composition's loss is the learning run's of its subjects


def optim_settings(model: str, settings, kind: str = "learn") -> OptimSettings:
    """The loop's settings: the family's for the run ``kind`` (`RUN_CONFIGS`; an edit's and a refine's are editing's, a
    composition's polish learning's), run for ``warmup + iters`` full iterations plus a last one (which takes no
    optimizer step and so builds no graph: run, not measured), never stopping early. ``grad_steps`` beyond the family's
    denoising steps add steps when generating or composing: all of them then keep their graph (SD-Turbo with
    ``--grad-steps 3``: 3 steps).

    Raises:
        ValueError: settings the loop refuses.
    """
    family = config_for(RUN_CONFIGS[kind], model).optim
    total = settings.warmup + settings.iters
    generates = kind in ("learn", "compose")
    steps = max(family.num_inference_steps, settings.grad_steps or 0) if generates else family.num_inference_steps
    return dataclasses.replace(
        family,
        max_iters=total + 1,
        patience=total + 2,
        min_improvement=0.0,
        grad_steps=family.grad_steps if settings.grad_steps is None else settings.grad_steps,
        num_inference_steps=steps,
    )


def _photo_and_mask(resolution: int) -> tuple[Image.Image, np.ndarray]:
    """A photo-like scene at ``resolution`` (smooth colours) and a box in its middle as the object to replace."""
    ys, xs = np.mgrid[0:resolution, 0:resolution] / resolution
    photo = Image.fromarray((np.stack([xs, ys, 1 - xs], -1) * 255).astype(np.uint8))
    mask = np.zeros((resolution, resolution), dtype=bool)
    mask[resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = True
    return photo, mask


def _scene_objective(models: Models, spec: RunSpec, subjects: int) -> tuple:
    """What a run optimizes, as its run builds it: its settings (a refine's with its prompt), its similarity loss,
    an edit's or a refine's scene (the image at model resolution and its mask; ``None`` when learning) and a refine's
    structure term and weight (``None``: none)."""
    backbone, config, job = models.loaded, spec.config, spec.job
    if spec.kind == "refine":  # the refine run's own set-up: the subject's region, the scene, the loss
        setup = set_up(spec, models)
        return setup.config, setup.loss, setup.scene, setup.structure
    boxes = terms = None
    if subjects > 1:
        side = backbone.resolution
        boxes = [subject.box.pixels(side, side) for subject in spec.subjects]
        terms = subject_names([None] * subjects)
    # The loss as every run builds it, in the run's order (`siso.runs.objective.objective`), on these networks.
    loss_fn, _ = run_objective(models, config, spec.subjects, boxes, terms)
    scene = None
    if spec.kind == "edit":
        scene = prepare_scene(job.scene, job.mask, backbone.resolution, config.edit.mask_dilation)
    return config, loss_fn, scene, None


def run_configuration(model: str, settings, name: str, configuration: Configuration, subjects: int = 1) -> dict:
    """Build ``model`` under ``configuration`` (called ``name``) and run ``settings.warmup + settings.iters``
    iterations (``settings``: a `siso.bench.BenchSettings`) scoring ``subjects`` subjects; an edit or a refine (one
    subject) inverts its image first, timed on its own.

    Returns:
        The figures of one row of the report (seconds are wall time; ``cpu_seconds`` is the process's CPU time).
    """
    start = time.perf_counter()
    with PeakMemory(settings.device) as peak:
        models, similarity, dtype, loss_vae = build_models(model, settings, configuration)
        spec = bench_spec(model, settings, configuration, subjects, similarity, dtype)
        backbone = models.loaded
        config, loss_fn, scene, structure = _scene_objective(models, spec, subjects)
        optim = config.optim
        objective, inversion = loss_fn, None
        if scene is not None:
            began, began_cpu = time.perf_counter(), time.process_time()
            inverted = invert_scene(backbone, scene, config, progress=False)
            inversion = {
                "seconds": time.perf_counter() - began,
                "cpu_seconds": time.process_time() - began_cpu,
                "model_evaluations": inverted.inversion.model_evaluations,
            }
            objective = edit_objective(inverted, scene, config, loss_fn, structure)

        def draw(cond):
            if scene is not None:
                return inverted.render(cond, optim.grad_steps)
            generator = torch.Generator().manual_seed(optim.seed)
            return backbone.sample(cond, generator, optim.num_inference_steps, optim.grad_steps, optim.guidance_scale)

        reencode = configuration.reencode_prompt
        loop = run_loop(backbone, config, objective, loss_fn, draw, start, reencode, loss_vae)
    figures = loop_figures(loop, backbone, config, objective, draw, settings, peak, reencode, loss_vae)
    return {
        "config": name,
        "subjects": subjects,
        "dtype": dtype,
        **figures,
        "loss": "fast (not the paper's)" if configuration.fast else "paper",
        # An edit's or a refine's inversion alone: seconds, CPU seconds and denoiser passes.
        "inversion": inversion,
    }
