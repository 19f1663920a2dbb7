"""The runs behind ``siso generate`` (learning a subject, or reusing a saved one with ``--lora``) and ``siso edit``:
load, optimize (or load the saved subject), then write everything into a run folder (`siso.runs.folder.RunFolder`,
whose docstring gives the layout)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path

from PIL import Image

from siso.backbones import Backbone, load_backbone
from siso.compose import Subject, check_subjects, place_subjects, subject_names
from siso.config import EditConfig, SisoConfig
from siso.devices import resolve_dtype
from siso.editing import composite, edit_subject, prepare_scene
from siso.lora import check_lora_file, load_lora, read_subject_info
from siso.losses import CompositionLoss, SimilarityLoss
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name
from siso.optimize import IterationCallback, Objective, optimize_generation
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob, GenerationJob, resolve_edit, resolve_edit_subjects
from siso.runs.memory import PeakMemory
from siso.vision.grounding import DEFAULT_DETECTOR


def _versions() -> dict[str, str]:
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
        loss_fn = loss_fn or _composition_loss(config, backbone, subjects, boxes, names, nets)
    else:
        loss_fn = loss_fn or SimilarityLoss.from_pretrained(
            config.similarity, subjects[0].image, backbone.device, backbone.dtype
        )
    loss_vae = None
    if config.fast.enabled:  # config.json records the tiny VAE used
        fast = dataclasses.replace(config.fast, tiny_vae=tiny_vae_name(config.fast, type(backbone)))
        config = dataclasses.replace(config, fast=fast)
        loss_vae = load_tiny_vae(fast.tiny_vae, backbone)
    out.timings["load_seconds"] = time.perf_counter() - start
    placed = {"subjects": records} if composed else {"subject": subjects[0].path}
    out.write_json(
        "config.json",
        {
            "command": command,
            **placed,
            "job": job.__dict__ if job else None,
            "siso": config.to_dict(),
            "versions": _versions(),
        },
    )

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
    subject: Image.Image | Sequence[Subject],
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
        subject: The subject photo, or several subjects (`siso.compose.Subject`), each with its ``region`` of the
            photo: each is learned on the box around its region (`siso.losses.CompositionLoss`), and the background
            term keeps the photo outside their union (``job.mask`` and ``job.object_name`` are then unused).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        MaskError: no usable mask (nothing detected, a region missing, or a mask that vanishes at the model
            resolution).
    """
    start = time.perf_counter()
    subjects = list(subject) if not isinstance(subject, Image.Image) else None
    if subjects is None:
        mask, prompt, names = resolve_edit(job, subject, config.device)
    else:
        check_subjects(subjects)
        mask, prompt, classes = resolve_edit_subjects(job, subjects, config.device)
    config = dataclasses.replace(config, train_prompt=prompt, dtype=resolve_dtype(config.dtype, config.device))
    if backbone is None:
        backbone = load_backbone(config.model, config.dtype, config.device, config.resolution, config.memory.quantize)
    scene = prepare_scene(job.scene, mask, backbone.resolution, config.edit.mask_dilation)
    if subjects is None:
        loss_fn = loss_fn or SimilarityLoss.from_pretrained(config.similarity, subject, backbone.device, backbone.dtype)
    else:
        boxes = [scene.locate(s.region) for s in subjects]
        terms = subject_names(classes)
        names = {
            "subjects": [
                {"photo": s.path, "class": name, "box_pixels": box, "term": term}
                for s, name, box, term in zip(subjects, classes, boxes, terms, strict=True)
            ]
        }
        loss_fn = loss_fn or _composition_loss(config, backbone, subjects, boxes, terms, nets)
        subject = subjects[0].image
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
            "versions": _versions(),
        },
    )
    out.save_image("input.png", scene.input_image)
    out.save_image("mask.png", scene.mask_image)

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
) -> CompositionLoss:
    """The loss of ``subjects`` in their ``boxes`` (whole pixels of the model's image), on ``nets`` (networks, weights)
    when given, else on the networks of ``config.similarity``, loaded here."""
    images = [subject.image for subject in subjects]
    if nets is None:
        return CompositionLoss.from_pretrained(
            config.similarity, images, boxes, terms, config.compose, backbone.device, backbone.dtype
        )
    networks, weights = nets
    return CompositionLoss(networks, images, boxes, terms, weights, config.compose)


def _ir_note(config: SisoConfig) -> str:
    return (
        f"IR term: CLIP image embedding of {config.similarity.ir_model}, a substitute for the paper's GUIE model "
        "unless that checkpoint was passed"
    )


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
    dtype = resolve_dtype(dtype, device)
    backbone = load_backbone(model, dtype, device, info.get("resolution"), quantize)
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
            "versions": _versions(),
        },
    )
    metrics: dict = {"complete": False}
    try:
        metrics["images"] = out.generate_images(backbone, job, progress)
        metrics["complete"] = True
    finally:
        out.write_json("metrics.json", metrics)
    return metrics
