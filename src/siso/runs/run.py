"""The runs behind ``siso generate`` (learning a subject) and ``siso edit``: load, optimize, then write everything
into a run folder (`siso.runs.folder.RunFolder`, whose docstring gives the layout). Reusing a saved subject is
`siso.runs.reuse.run_reuse`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version

from PIL import Image

from siso.backbones import Backbone, check_ip_adapter, load_backbone
from siso.compose import Subject, check_subjects, place_subjects, subject_names
from siso.config import EditConfig, SisoConfig
from siso.devices import resolve_dtype
from siso.editing import composite, edit_subject, prepare_scene
from siso.losses import CompositionLoss, SimilarityLoss, describe_ir
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name
from siso.optimize import IterationCallback, Objective, optimize_generation
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob, GenerationJob, resolve_edit, resolve_edit_subjects
from siso.runs.memory import PeakMemory
from siso.runs.negatives import generic_negatives, save_generic
from siso.vision.grounding import DEFAULT_DETECTOR


def versions() -> dict[str, str]:
    """The versions of siso and the libraries its results depend on, for config.json."""
    return {name: version(name) for name in ("siso", "torch", "diffusers", "transformers", "peft")}


def run_generate(
    out: RunFolder,
    config: SisoConfig,
    subject: Image.Image | Sequence[Subject],
    job: GenerationJob | None,
    command: list[str] | None = None,
    subject_path: str | None = None,
    progress: bool = True,
    backbone: Backbone | None = None,
    loss_fn: Objective | None = None,
    callback: IterationCallback | None = None,
    notify: Callable[[str], None] | None = None,
    detector: str = DEFAULT_DETECTOR,
    nets: tuple[dict, dict] | None = None,
) -> dict:
    """Optimize a subject (or several, each in its box), save it, then generate every prompt x seed of ``job`` (if
    any) with the learned LoRA.

    On Ctrl-C / SIGTERM (as KeyboardInterrupt) during optimization, the best-so-far image, LoRA, config and
    metrics are still written, with ``"complete": false`` in metrics.json.

    Args:
        subject: The subject photo, or the subjects (`siso.compose.Subject`: photo, class, box). Several subjects,
            or one with a box, are learned with `siso.losses.CompositionLoss`; without boxes, several are placed as
            the frozen model's first image has them (`siso.compose.place_subjects`).
        subject_path: The photo's file (one photo given), for config.json.
        backbone: An already loaded backbone without LoRA, instead of loading ``config.model`` (the app's); it
            carries the best LoRA after.
        loss_fn: The loss, already set to the subject(s) (instead of loading its networks).
        callback: Also called after every iteration, as `optimize_subject`'s (returning True stops the run, which
            keeps the best so far).
        notify: Told each line worth a user's eye before the optimization (a subject put in a default slot).
        detector: Grounding DINO, to find the layout of several subjects without boxes.
        nets: Similarity networks already loaded and their weights (`siso.losses.load_nets`), for the loss of
            several subjects (or one in a box) when ``loss_fn`` is not given (the app's).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        BoxError: a box reaches outside the image (before anything is written).
    """
    start = time.perf_counter()
    subjects = [Subject(subject, path=subject_path)] if isinstance(subject, Image.Image) else list(subject)
    check_subjects(subjects)
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, config.device))  # recorded as used
    if config.ip_adapter.enabled:  # refused before anything loads
        if len(subjects) > 1:
            raise ValueError("an IP-Adapter start takes one subject (its photos are the adapter's image)")
        check_ip_adapter(config.model)
    if backbone is None:
        backbone = load_backbone(config.model, config.dtype, config.device, config.resolution, config.memory.quantize)
    composed = len(subjects) > 1 or subjects[0].box is not None
    records = layout_notes = None
    if composed:
        placements, classes, layout_notes = place_subjects(backbone, subjects, config, detector)
        for note in layout_notes:
            (notify or print)(note)
        side = backbone.resolution
        boxes = [placement.box.pixels(side, side) for placement in placements]
        names = subject_names(classes)
        records = [
            {**s.record(), "class": name, "box": str(p.box), "box_pixels": box, "placed": p.source, "term": term}
            for s, name, p, box, term in zip(subjects, classes, placements, boxes, names, strict=True)
        ]
    generic = None
    if loss_fn is None and config.negatives.generic:
        generic = generic_negatives(backbone, config, subjects, classes if composed else None, detector)
    if config.ip_adapter.enabled:  # after the generic negatives (the class's images, not the subject's), before the
        # LoRA; the saved subject records it (siso.lora.save_lora)
        backbone.load_ip_adapter(config.ip_adapter, subjects[0].photos)
    if composed:
        loss_fn = loss_fn or _composition_loss(config, backbone, subjects, boxes, names, nets, generic)
    else:
        loss_fn = loss_fn or _subject_loss(config, backbone, subjects[0], generic)
    loss_vae = None
    if config.fast.enabled:  # config.json records the tiny VAE used
        fast = dataclasses.replace(config.fast, tiny_vae=tiny_vae_name(config.fast, type(backbone)))
        config = dataclasses.replace(config, fast=fast)
        loss_vae = load_tiny_vae(fast.tiny_vae, backbone)
    out.timings["load_seconds"] = time.perf_counter() - start
    placed = (
        {"subjects": records} if composed else {"subject": subjects[0].path, "photos": subjects[0].record()["photos"]}
    )
    out.write_json(
        "config.json",
        {
            "command": command,
            **placed,
            "job": job.__dict__ if job else None,
            "siso": config.to_dict(),
            "ir_network": describe_ir(config.similarity.ir_model),
            "versions": versions(),
        },
    )
    if generic:
        save_generic(out.path, generic, names if composed else ["subject"])

    def on_iteration(iteration: int, image: Image.Image, terms: dict) -> bool | None:
        out.save_iteration(iteration, image)
        return callback(iteration, image, terms) if callback else None

    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = optimize_generation(backbone, loss_fn, config, on_iteration, progress, loss_vae)
    out.timings["optimize_seconds"] = time.perf_counter() - start
    metrics = {
        "complete": False,
        **result.record(),
        **peak.record(),
        "timings": out.timings,
        "ir_model_note": _ir_note(config),
    }
    if composed:
        metrics["layout_notes"] = layout_notes
    info = {"model": config.model, "train_prompt": config.train_prompt}
    if composed:
        info["subjects"] = [{k: r[k] for k in ("class", "box", "term")} for r in records]
    out.save_optimization(result, backbone, info)
    if not result.complete:
        out.write_json("metrics.json", metrics)
        raise KeyboardInterrupt
    try:
        if job is not None:
            start = time.perf_counter()
            metrics["images"] = out.generate_images(backbone, job, progress)
            out.timings["generate_seconds"] = time.perf_counter() - start
        metrics["complete"] = True
    finally:
        out.write_json("metrics.json", metrics)
    return metrics


def run_edit(
    out: RunFolder,
    config: EditConfig,
    job: EditJob,
    subject: Image.Image | Subject | Sequence[Subject],
    command: list[str] | None = None,
    paths: dict | None = None,
    progress: bool = True,
    backbone: Backbone | None = None,
    loss_fn: Objective | None = None,
    callback: IterationCallback | None = None,
    nets: tuple[dict, dict] | None = None,
) -> dict:
    """Edit a photo: find the object mask, invert the photo, optimize the subject LoRA, write the run folder.

    ``config.train_prompt`` is replaced by the job's prompt (given, or "a photo of a {subject class}").
    Ctrl-C / SIGTERM (as KeyboardInterrupt) keeps the best-so-far edit, like `run_generate`. ``backbone``,
    ``loss_fn``, ``callback`` and ``nets`` as `run_generate`'s (the callback sees the crop of each edit).

    Args:
        subject: The subject photo, one `siso.compose.Subject` (its photos; ``job`` says where it goes), or several
            subjects, each with its ``region`` of the photo: each is learned on the box around its region
            (`siso.losses.CompositionLoss`), and the background term keeps the photo outside their union
            (``job.mask`` and ``job.object_name`` are then unused).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        MaskError: no usable mask (nothing detected, a region missing, or a mask that vanishes at the model
            resolution).
    """
    start = time.perf_counter()
    if config.ip_adapter.enabled:
        raise ValueError("editing takes no IP-Adapter: the zero-shot start is for generation")
    if isinstance(subject, Image.Image):
        subject = Subject(subject)
    subjects = None if isinstance(subject, Subject) else list(subject)
    if subjects is None:
        mask, prompt, names = resolve_edit(job, subject.photos[0], config.device)
        names["photos"] = subject.record()["photos"]
    else:
        check_subjects(subjects)
        mask, prompt, classes = resolve_edit_subjects(job, subjects, config.device)
    config = dataclasses.replace(config, train_prompt=prompt, dtype=resolve_dtype(config.dtype, config.device))
    if backbone is None:
        backbone = load_backbone(config.model, config.dtype, config.device, config.resolution, config.memory.quantize)
    scene = prepare_scene(job.scene, mask, backbone.resolution, config.edit.mask_dilation)
    generic = None
    if loss_fn is None and config.negatives.generic:
        given = [Subject(subject.photos, names["subject_class"])] if subjects is None else subjects
        generic = generic_negatives(backbone, config, given, None if subjects is None else classes, job.detector)
    if subjects is None:
        loss_fn = loss_fn or _subject_loss(config, backbone, subject, generic)
        subject = subject.photos[0]
    else:
        boxes = [scene.locate(s.region) for s in subjects]
        terms = subject_names(classes)
        names = {
            "subjects": [
                {"photo": s.path, "photos": s.record()["photos"], "class": name, "box_pixels": box, "term": term}
                for s, name, box, term in zip(subjects, classes, boxes, terms, strict=True)
            ]
        }
        loss_fn = loss_fn or _composition_loss(config, backbone, subjects, boxes, terms, nets, generic)
        subject = subjects[0].photos[0]
    out.timings["load_seconds"] = time.perf_counter() - start
    out.write_json(
        "config.json",
        {
            "command": command,
            **(paths or {}),
            "mask": job.mask_source,
            **names,
            "prompt": prompt,
            "siso": config.to_dict(),
            "ir_network": describe_ir(config.similarity.ir_model),
            "versions": versions(),
        },
    )
    out.save_image("input.png", scene.input_image)
    out.save_image("mask.png", scene.mask_image)
    if generic:
        save_generic(out.path, generic, ["subject"] if subjects is None else terms)

    def on_iteration(iteration: int, image: Image.Image, terms: dict) -> bool | None:
        out.save_iteration(iteration, image)
        return callback(iteration, image, terms) if callback else None

    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = edit_subject(
            backbone, scene, subject, config, callback=on_iteration, loss_fn=loss_fn, progress=progress
        )
    out.timings["edit_seconds"] = time.perf_counter() - start
    out.save_image("inversion.png", result.reconstruction)
    out.save_optimization(result, backbone, {"model": config.model, "train_prompt": prompt})
    if config.edit.composite:
        out.save_image("best_uncomposited.png", result.best_image)
        blended = composite(result.best_image, scene.input_image, scene.mask_image, config.edit.feather)
        out.save_image("best.png", blended)
    metrics = {
        "complete": result.complete,
        **result.record(),
        **peak.record(),
        "inversion_method": config.inversion.method,
        "timings": out.timings,
        "ir_model_note": _ir_note(config),
    }
    out.write_json("metrics.json", metrics)
    if not result.complete:
        raise KeyboardInterrupt
    return metrics


def _composition_loss(
    config: SisoConfig,
    backbone: Backbone,
    subjects: Sequence[Subject],
    boxes: list[tuple[int, int, int, int]],
    terms: list[str],
    nets: tuple[dict, dict] | None,
    generic: list[list[Image.Image]] | None = None,
) -> CompositionLoss:
    """The loss of ``subjects`` in their ``boxes`` (whole pixels of the model's image), on ``nets`` (networks, weights)
    when given, else on the networks of ``config.similarity``, loaded here; with ``config.negatives`` and each
    subject's ``generic`` images."""
    photos = [subject.photos for subject in subjects]
    negatives = {"negatives": config.negatives, "generic": generic}
    if nets is None:
        return CompositionLoss.from_pretrained(
            config.similarity, photos, boxes, terms, config.compose, backbone.device, backbone.dtype, **negatives
        )
    networks, weights = nets
    return CompositionLoss(networks, photos, boxes, terms, weights, config.compose, **negatives)


def _subject_loss(
    config: SisoConfig, backbone: Backbone, subject: Subject, generic: list[list[Image.Image]] | None
) -> SimilarityLoss:
    """The loss of one subject anywhere in the image: its photos, ``config.negatives`` and its ``generic`` images (the
    one list of `siso.runs.negatives.generic_negatives`, when drawn)."""
    return SimilarityLoss.from_pretrained(
        config.similarity,
        subject.photos,
        backbone.device,
        backbone.dtype,
        negatives=config.negatives,
        generic=generic[0] if generic else (),
    )


def _ir_note(config: SisoConfig) -> str:
    return "IR term: " + describe_ir(config.similarity.ir_model)
