"""A refine run (`refine`): give an image that already shows the subject (another model's output, or a photo) the
subject's identity, keeping the rest of it.

Editing's machinery with the subject's own region: the image is inverted (ReNoise) at a lower strength than an
edit's, so its pose and layout survive, and each iteration denoises it with the LoRA and minimises

    ``L = L_identity + c_bg * L_bg + c_struct * L_struct``

(`siso.config.RefineSettings`): the composed run's identity term on each subject's region crop, editing's background
MSE outside the regions, and the structure term inside them (`siso.losses.structure`). The run folder is an edit's,
at the size of the given image, and metrics.json adds ``before``/``after``: each region's similarity to its subject's
photos under the loss's networks and under a check network the loss does not use.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from siso.backbones import Backbone, check_ip_adapter
from siso.compose import Subject, subject_names
from siso.config import IPAdapterSettings, RefineConfig
from siso.editing import composite, edit_subject, prepare_scene
from siso.editing.scene import Scene
from siso.losses import describe_ir
from siso.losses.negatives import cosines, embed_photos
from siso.losses.structure import StructureLoss
from siso.runs.folder import versions
from siso.runs.jobs import refine_prompt, refine_regions
from siso.runs.memory import PeakMemory
from siso.runs.models import Models
from siso.runs.negatives import save_generic
from siso.runs.objective import objective

Box = tuple[int, int, int, int]


def region_box(region: np.ndarray) -> Box:
    """(x0, y0, x1, y1) of the smallest box around a region ((H, W) bool, not empty), ends exclusive."""
    rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@torch.no_grad()
def identity_scores(
    nets: dict[str, torch.nn.Module], image: Image.Image, boxes: Sequence[Box], photos: Sequence[Sequence[Image.Image]]
) -> list[dict[str, float]]:
    """Per subject, under each network, the mean cosine similarity of the crop of its box in ``image`` to each of its
    photos (each embedded on its own, as the loss embeds them).

    Args:
        nets: Name -> image embedding network (`siso.losses.embeddings`).
        image: The image (RGB).
        boxes: Per subject, its box in ``image``'s pixels.
        photos: Per subject, its photos.
    """
    scores = []
    for box, own in zip(boxes, photos, strict=True):
        crop = image.crop(box)
        row = {}
        for name, net in nets.items():
            device = next(net.parameters()).device
            row[name] = float(cosines(embed_photos(net, [crop], device), embed_photos(net, own, device)).mean())
        scores.append(row)
    return scores


def draw_start(backbone: Backbone, config: RefineConfig, subjects: Sequence[Subject], prompt: str) -> Image.Image:
    """The image to refine, drawn from ``prompt`` by the frozen model with the IP-Adapter conditioned on the first
    subject's photos (the zero-shot start), with the run's seed, steps and guidance; the adapter is taken off after.
    """
    backbone.load_ip_adapter(config.ip_adapter, subjects[0].photos)
    try:
        opt = config.optim
        return backbone.generate(prompt, opt.seed, opt.num_inference_steps, opt.guidance_scale)
    finally:
        backbone.unload_ip_adapter()


@dataclass
class RefineSetup:
    """What a refine optimizes, found and built before anything is written (`set_up`).

    Attributes:
        config: The run's settings, with the prompt as ``train_prompt``.
        image: The image to refine (given, or drawn by the IP-Adapter start).
        regions: Per subject, its region in ``image`` ((H, W) bool), and how it was made (``sources``).
        classes, terms: Per subject, its class and the name of its identity term.
        scene: ``image`` at model resolution with the union of the regions as its mask.
        boxes: Per subject, its region's box in whole pixels of the model's image.
        loss: The identity loss (`siso.losses.CompositionLoss`, one term per subject on its box).
        generic: Per subject, the generic images of the ``generic`` negative (``None``: none).
        structure: The structure term and its weight (``None``: weight 0).
    """

    config: RefineConfig
    image: Image.Image
    regions: list[np.ndarray]
    sources: list[str]
    classes: list[str | None]
    terms: list[str]
    scene: Scene
    boxes: list[tuple[int, int, int, int]]
    loss: torch.nn.Module
    generic: list[list[Image.Image]] | None
    structure: tuple[StructureLoss, float] | None


def set_up(spec, models: Models) -> RefineSetup:
    """Find each subject's region (drawing the image first for an IP-Adapter start) and build the refine's loss on
    ``models``, for a ``refine`` `siso.runs.spec.RunSpec` (its ``out`` is not used: `siso bench` sets up runs it
    only measures).

    Raises:
        ValueError: an IP-Adapter start with several subjects or on a family without an adapter.
        MaskError: a region that cannot be used or found.
    """
    config, job, subjects = spec.config, spec.job, spec.subjects
    from_adapter = config.refine.start == "ip-adapter"
    if from_adapter:
        if len(subjects) > 1:
            raise ValueError("an IP-Adapter start takes one subject (its photos are the adapter's image)")
        check_ip_adapter(config.model)
    prompt, classes = refine_prompt(job, subjects, config.device)
    config = dataclasses.replace(config, train_prompt=prompt)
    backbone = models.backbone(config)
    image = draw_start(backbone, config, subjects, prompt) if from_adapter else job.image.convert("RGB")
    segmenter = functools.partial(models.segmenter, job.detector, job.segmenter, job.box_threshold)  # kept for runs
    regions, sources = refine_regions(job, image, subjects, classes, config.device, segmenter)
    scene = prepare_scene(
        image, np.logical_or.reduce(regions), backbone.resolution, config.edit.mask_dilation, whole=job.whole
    )
    boxes = [scene.locate(region) for region in regions]
    terms = subject_names(classes)
    # The adapter drew the start; the loss and the LoRA are the frozen model's.
    learning = dataclasses.replace(
        config, ip_adapter=IPAdapterSettings(), refine=dataclasses.replace(config.refine, start="image")
    )
    loss, generic = objective(models, learning, subjects, boxes, terms, classes, job.detector)
    structure = None
    if config.refine.structure_weight > 0:
        dino = models.networks(config).nets[0]["dino"]
        structure = (StructureLoss(dino, scene.image.to(backbone.device), boxes), config.refine.structure_weight)
    return RefineSetup(config, image, regions, sources, classes, terms, scene, boxes, loss, generic, structure)


def refine(spec, models: Models, progress: bool, callback, notify) -> dict:
    """Run a ``refine`` `siso.runs.spec.RunSpec` (called by `siso.runs.run.run`, whose docstring gives the arguments):
    find each subject's region, invert the image, optimize the LoRA, write the run folder."""
    start = time.perf_counter()
    out, job, subjects = spec.out, spec.job, spec.subjects
    setup = set_up(spec, models)
    config, image, scene, terms, generic = setup.config, setup.image, setup.scene, setup.terms, setup.generic
    regions, sources, classes, prompt = setup.regions, setup.sources, setup.classes, setup.config.train_prompt
    backbone = models.backbone(config)
    check = models.check_network(config.refine.check_model)
    out.timings["load_seconds"] = time.perf_counter() - start
    ir_network = describe_ir(config.similarity.ir_model)
    records = [
        {"photo": s.path, "photos": s.record()["photos"], "class": name, "region": source, "term": term}
        for s, name, source, term in zip(subjects, classes, sources, terms, strict=True)
    ]
    out.write_json(
        "config.json",
        {
            "command": spec.command,
            **(spec.paths or {}),
            "subjects": records,
            "prompt": prompt,
            "siso": config.to_dict(),
            "ir_network": ir_network,
            "versions": versions(),
        },
    )
    size = image.size
    mask = scene.mask_image.resize(size, Image.Resampling.NEAREST)
    out.save_image("input.png", image)
    out.save_image("mask.png", mask)
    if generic:
        save_generic(out.path, generic, terms)
    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = edit_subject(
            backbone,
            scene,
            subjects[0].photos[0],
            config,
            callback=out.saving(callback),
            loss_fn=setup.loss,
            progress=progress,
            structure=setup.structure,
        )
    out.timings["refine_seconds"] = time.perf_counter() - start
    out.save_image("inversion.png", result.reconstruction.resize(size, Image.Resampling.LANCZOS))
    result.best_image = result.best_image.resize(size, Image.Resampling.LANCZOS)
    out.save_optimization(result, backbone, {"model": config.model, "train_prompt": prompt})
    best = result.best_image
    if config.edit.composite:
        out.save_image("best_uncomposited.png", best)
        best = composite(best, image, mask, config.edit.feather)
        out.save_image("best.png", best)
    nets = {**models.networks(config).nets[0], "check": check}
    crops = [region_box(region) for region in regions]
    photos = [subject.photos for subject in subjects]
    before, after = identity_scores(nets, image, crops, photos), identity_scores(nets, best, crops, photos)
    metrics = {
        "complete": result.complete,
        **result.record(),
        **peak.record(),
        "inversion_method": config.inversion.method,
        "regions": sources,
        "start": config.refine.start,
        "check_model": config.refine.check_model,
        "before": dict(zip(terms, before, strict=True)),
        "after": dict(zip(terms, after, strict=True)),
        "timings": out.timings,
        "ir_model_note": "IR term: " + ir_network,
    }
    if job.whole:
        metrics["best_background_mse"] = None  # no background: the region is the whole image
    out.write_json("metrics.json", metrics)
    if not result.complete:
        raise KeyboardInterrupt
    return metrics
