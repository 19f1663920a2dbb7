"""A composition run: saved subjects drawn together, each in its region, with no new learning
(`siso.compose.regional`), then, with ``polish``, a few iterations of the composed loss that optimize every
subject's LoRA at once through the regional forward.

The steps, in order: check the subjects (before any model loads); place them (their boxes, or where the bare model
draws each class, `siso.compose.plan_layout`); with a polish, put its loss together while the backbone is still bare
(the generic negatives are the frozen model's); load every subject's adapter; polish; write the composed subject
folder (``lora/``, `siso.compose.saved.save_composed`, which ``--lora`` redraws exactly); draw the job's images.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.training_utils import cast_training_params
from PIL import Image

from siso.compose import Box, Subject, plan_layout, subject_names
from siso.compose.layout import first_image
from siso.compose.regional import RegionalSampler
from siso.compose.saved import SavedSubject, check_composable, load_saved, save_composed
from siso.config import SisoConfig
from siso.images import load_subject
from siso.lora import adapter_parameters
from siso.optimize import Render, optimize_lora
from siso.runs.folder import versions
from siso.runs.memory import PeakMemory
from siso.runs.models import Models
from siso.runs.objective import objective
from siso.runs.spec import RunSpec
from siso.vision.grounding import SubjectCropper
from siso.vision.masks import MaskError


def compose(spec: RunSpec, models: Models, progress: bool, callback, notify) -> dict:
    """Run a composition (`siso.runs.run.run`'s ``compose`` kind) into ``spec.out``; returns metrics.json's data."""
    start = time.perf_counter()
    config, out, job = spec.config, spec.out, spec.job
    saved = [dataclasses.replace(s) for s in spec.saved]  # copies: placing them sets their boxes
    resolution = check_composable(saved)
    photos = [s.photos for s in saved]
    if spec.polish:
        for subject, files in zip(saved, photos, strict=True):
            if not files:
                raise ValueError(
                    f"--polish compares each subject with its photos, and {subject.name} keeps none that can be read: "
                    "save it in the library (--save-as), which keeps them"
                )
    models.check_resolution(resolution, "the subjects were")
    config = dataclasses.replace(config, resolution=resolution)
    backbone = models.backbone(config)
    classes, notes = _place(saved, photos, backbone, config, spec.detector)
    for note in notes:
        notify(note)
    side = backbone.resolution
    boxes = [s.box for s in saved]
    names = subject_names(classes)
    loss_fn = None
    if spec.polish:  # while the backbone is bare: the generic negatives are the frozen model's images
        subjects = [
            Subject([load_subject(p) for p in files], c, b) for files, c, b in zip(photos, classes, boxes, strict=True)
        ]
        pixels = [box.pixels(side, side) for box in boxes]
        loss_fn, _ = objective(models, config, subjects, pixels, names, classes, spec.detector)
    adapters = load_saved(backbone, saved)
    sampler = RegionalSampler(backbone, adapters, boxes, spec.edge)
    out.timings["load_seconds"] = time.perf_counter() - start
    records = [
        {"name": s.name, "folder": str(s.folder), "class": c, "box": str(s.box), "term": n, "photos": list(map(str, f))}
        for s, c, n, f in zip(saved, classes, names, photos, strict=True)
    ]
    out.write_json(
        "config.json",
        {
            "command": spec.command,
            "subjects": records,
            "edge": spec.edge,
            "polish": spec.polish,
            "job": job.__dict__,
            "siso": config.to_dict(),
            "versions": versions(),
        },
    )
    info = {"model": config.model, "train_prompt": config.train_prompt, "polish": spec.polish}
    metrics: dict = {"complete": False, "layout_notes": notes, "timings": out.timings}
    if spec.polish:
        start = time.perf_counter()
        with PeakMemory(backbone.device) as peak:
            result = _polish(sampler, loss_fn, config, spec.polish, out.saving(callback), progress)
        out.timings["polish_seconds"] = time.perf_counter() - start
        metrics.update(result.record(), **peak.record())
        out.save_optimization(
            result, backbone, info, lambda folder: save_composed(backbone, folder, saved, adapters, spec.edge, **info)
        )
        if not result.complete:
            out.write_json("metrics.json", metrics)
            raise KeyboardInterrupt
    else:
        save_composed(backbone, out.path / "lora", saved, adapters, spec.edge, **info)
    try:
        start = time.perf_counter()
        metrics["images"] = out.generate_images(backbone, job, progress, draw=sampler.generate)
        out.timings["generate_seconds"] = time.perf_counter() - start
        metrics["complete"] = True
    finally:
        out.write_json("metrics.json", metrics)
    return metrics


def _place(saved: list[SavedSubject], photos: list, backbone, config, detector: str) -> tuple[list, list[str]]:
    """Give every subject its box (in place): its own, or, when none has one, where the bare model's image for the
    run's prompt and seed shows its class (Grounding DINO; a class not found takes its default slot). Returns each
    subject's class (recorded, or named from its photo where the layout needs it) and the layout's notes."""
    classes = [s.class_name for s in saved]
    if len(saved) == 1 and saved[0].box is None:  # one subject (a polish of it): the whole image is its region
        saved[0].box = Box(0, 0, 1, 1)
    if all(s.box is not None for s in saved):
        return classes, []
    cropper = SubjectCropper(detector, backbone.device)
    for k, (subject, files) in enumerate(zip(saved, photos, strict=True)):
        if classes[k] is None and files:
            classes[k] = cropper.name_object(load_subject(files[0]))
        if classes[k] is None:
            raise MaskError(f"could not tell what {subject.name} is, to find it in the image: give each --lora a --box")
    image: Image.Image = first_image(backbone, config)  # before any adapter loads: the bare model's
    placements, notes = plan_layout([None] * len(saved), classes, image, cropper)
    for subject, placement in zip(saved, placements, strict=True):
        subject.box = placement.box
    return classes, notes


@contextmanager
def polishing(sampler: RegionalSampler, config: SisoConfig) -> Iterator[tuple[Render, dict[str, torch.nn.Module]]]:
    """A polish's render and what it optimizes: inside the block every subject's denoiser adapter is trainable (in
    fp32, as `siso.lora.add_lora` makes a new one; the text-encoder adapters stay as loaded), frozen again after.

    Yields:
        The render (the regional image of ``config``'s train prompt, seed and steps, differentiable in the last
        ``grad_steps``; its argument, the loop's own conditioning, is unused) and the modules for
        `siso.optimize.optimize_lora`'s ``modules``.
    """
    backbone, opt = sampler.backbone, config.optim
    with torch.no_grad():
        conds = sampler.encode_prompt(config.train_prompt, opt.guidance_scale)
    params = [p for a in sampler.adapters for p in adapter_parameters(backbone.denoiser, a).values()]

    def render(cond):
        generator = torch.Generator().manual_seed(opt.seed)
        return sampler.sample(conds, generator, opt.num_inference_steps, opt.grad_steps, opt.guidance_scale)

    for param in params:
        param.requires_grad_(True)
    cast_training_params([backbone.denoiser], dtype=torch.float32)  # Adam state and updates in fp32
    try:
        yield render, {backbone.denoiser_name: backbone.denoiser}
    finally:
        for param in params:
            param.requires_grad_(False)


def _polish(sampler: RegionalSampler, loss_fn, config, iterations: int, callback, progress: bool):
    """Up to ``iterations`` iterations of the composed loss (`polishing`); the adapters keep the best iteration's
    weights, and the result's best image is drawn again with them."""
    opt = config.optim
    config = dataclasses.replace(config, optim=dataclasses.replace(opt, max_iters=iterations))
    with polishing(sampler, config) as (render, modules):
        result = optimize_lora(sampler.backbone, render, loss_fn, config, callback, progress, modules=modules)
    # The loop's image may differ by float rounding (its `siso.accel` layouts); best.png is what the composed folder
    # draws: the same sampler, outside the loop.
    steps, guidance = opt.num_inference_steps, opt.guidance_scale
    result.best_image = sampler.generate(config.train_prompt, opt.seed, steps, guidance)
    return result
