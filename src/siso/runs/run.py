"""The one function that runs a run (`run`), whatever built its description (`siso.runs.spec.RunSpec`): learn a
subject, edit a photo, refine an image (`siso.runs.refine`), reuse a saved subject, or compose saved subjects
(`siso.runs.compose`), written into a run folder (`siso.runs.folder.RunFolder`, whose docstring gives the layout).
What a learning run optimizes is put together in one order by `siso.runs.objective.objective`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from siso.backbones import check_ip_adapter
from siso.compose import place_subjects, subject_names
from siso.editing import composite, edit_subject, prepare_scene
from siso.lora import check_lora_file, load_saved_subject, read_subject_info, saved_ip_adapter
from siso.losses import describe_ir
from siso.losses.tiny_vae import load_tiny_vae, tiny_vae_name
from siso.optimize import IterationCallback, optimize_generation
from siso.runs.compose import compose
from siso.runs.folder import versions
from siso.runs.jobs import resolve_edit, resolve_edit_subjects
from siso.runs.memory import PeakMemory
from siso.runs.models import Models
from siso.runs.negatives import save_generic
from siso.runs.objective import objective
from siso.runs.refine import refine
from siso.runs.spec import RunSpec

__all__ = ["objective", "run", "versions"]

Notify = Callable[[str], None]


def run(
    spec: RunSpec,
    models: Models | None = None,
    progress: bool = True,
    callback: IterationCallback | None = None,
    notify: Notify | None = None,
) -> dict:
    """Run ``spec`` into its run folder.

    On Ctrl-C / SIGTERM (as KeyboardInterrupt) while optimizing, the best-so-far image, LoRA, config and metrics are
    still written, with ``"complete": false`` in metrics.json, and the KeyboardInterrupt is raised again.

    Args:
        spec: What to run.
        models: The models to run it on, kept for the runs after it (the app's, ``eval run``'s); ``None``: loaded
            for this run. After a learn or edit run the backbone carries the best LoRA, after reuse the saved one,
            after compose every subject's adapter (``subject1``, ...).
        progress: Show progress bars.
        callback: Also called after every iteration with (iteration, image, loss terms), as `optimize_subject`'s
            (returning True stops the run, which keeps the best so far); an edit's image is the crop it scores.
        notify: Told each line worth a user's eye before optimizing (a subject put in a default slot); ``None``:
            printed.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ValueError: a spec without a run folder.
        BoxError: a box reaches outside the image (before anything is written).
        MaskError: an edit without a usable mask.
        FileNotFoundError, LoraError: a reuse run's saved subject is missing, damaged or does not fit the model
            (before anything is written).
    """
    if spec.out is None:
        raise ValueError("a run writes its run folder: give the RunSpec an out")
    kinds = {"learn": _learn, "edit": _edit, "refine": refine, "reuse": _reuse, "compose": compose}
    return kinds[spec.kind](spec, models or Models(), progress, callback, notify or print)


def _learn(spec: RunSpec, models: Models, progress: bool, callback, notify: Notify) -> dict:
    start = time.perf_counter()
    config, out, subjects, job = spec.config, spec.out, spec.subjects, spec.job
    if config.ip_adapter.enabled:  # refused before anything loads
        if len(subjects) > 1:
            raise ValueError("an IP-Adapter start takes one subject (its photos are the adapter's image)")
        check_ip_adapter(config.model)
    backbone = models.backbone(config)
    composed = spec.composed
    records = layout_notes = boxes = names = classes = None
    if composed:
        placements, classes, layout_notes = place_subjects(backbone, subjects, config, spec.detector)
        for note in layout_notes:
            notify(note)
        side = backbone.resolution
        boxes = [placement.box.pixels(side, side) for placement in placements]
        names = subject_names(classes)
        records = [
            {**s.record(), "class": name, "box": str(p.box), "box_pixels": box, "placed": p.source, "term": term}
            for s, name, p, box, term in zip(subjects, classes, placements, boxes, names, strict=True)
        ]
    loss_fn, generic = objective(models, config, subjects, boxes, names, classes, spec.detector)
    loss_vae = None
    if config.fast.enabled:  # config.json records the tiny VAE used
        fast = dataclasses.replace(config.fast, tiny_vae=tiny_vae_name(config.fast, type(backbone)))
        config = dataclasses.replace(config, fast=fast)
        loss_vae = load_tiny_vae(fast.tiny_vae, backbone)
    out.timings["load_seconds"] = time.perf_counter() - start
    ir_network = describe_ir(config.similarity.ir_model)  # config.json's, and metrics.json's note
    placed = (
        {"subjects": records} if composed else {"subject": subjects[0].path, "photos": subjects[0].record()["photos"]}
    )
    out.write_json(
        "config.json",
        {
            "command": spec.command,
            **placed,
            "job": job.__dict__ if job else None,
            "siso": config.to_dict(),
            "ir_network": ir_network,
            "versions": versions(),
        },
    )
    if generic:
        save_generic(out.path, generic, names if composed else ["subject"])
    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = optimize_generation(backbone, loss_fn, config, out.saving(callback), progress, loss_vae)
    out.timings["optimize_seconds"] = time.perf_counter() - start
    metrics = {"complete": False, **result.record(), **peak.record(), "timings": out.timings}
    metrics["ir_model_note"] = "IR term: " + ir_network
    if composed:
        metrics["layout_notes"] = layout_notes
    info = {"model": config.model, "train_prompt": config.train_prompt}
    if composed:
        keys = ("photo", "photos", "class", "box", "box_pixels", "term")
        info["subjects"] = [{k: r[k] for k in keys} for r in records]
    else:
        info["photos"] = placed["photos"]
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


def _edit(spec: RunSpec, models: Models, progress: bool, callback, notify: Notify) -> dict:
    """Find the object mask, invert the photo, optimize the subject LoRA. ``config.train_prompt`` is replaced by the
    job's prompt (given, or "a photo of a {subject class}"); several subjects are each learned on the box around
    their region, and the background term keeps the photo outside their union (``job.mask`` is then unused)."""
    start = time.perf_counter()
    config, out, job, subjects = spec.config, spec.out, spec.job, spec.subjects
    if config.ip_adapter.enabled:
        raise ValueError("editing takes no IP-Adapter: the zero-shot start is for generation")
    composed = spec.composed
    if composed:
        mask, prompt, classes = resolve_edit_subjects(job, subjects, config.device)
    else:
        mask, prompt, names = resolve_edit(job, subjects[0].photos[0], config.device)
        names["photos"] = subjects[0].record()["photos"]
        classes = [names["subject_class"]]
    config = dataclasses.replace(config, train_prompt=prompt)
    backbone = models.backbone(config)
    scene = prepare_scene(job.scene, mask, backbone.resolution, config.edit.mask_dilation)
    boxes = terms = None
    if composed:
        boxes = [scene.locate(s.region) for s in subjects]
        terms = subject_names(classes)
        names = {
            "subjects": [
                {"photo": s.path, "photos": s.record()["photos"], "class": name, "box_pixels": box, "term": term}
                for s, name, box, term in zip(subjects, classes, boxes, terms, strict=True)
            ]
        }
    loss_fn, generic = objective(models, config, subjects, boxes, terms, classes, job.detector)
    out.timings["load_seconds"] = time.perf_counter() - start
    ir_network = describe_ir(config.similarity.ir_model)  # config.json's, and metrics.json's note
    out.write_json(
        "config.json",
        {
            "command": spec.command,
            **(spec.paths or {}),
            "mask": job.mask_source,
            **names,
            "prompt": prompt,
            "siso": config.to_dict(),
            "ir_network": ir_network,
            "versions": versions(),
        },
    )
    out.save_image("input.png", scene.input_image)
    out.save_image("mask.png", scene.mask_image)
    if generic:
        save_generic(out.path, generic, terms or ["subject"])
    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = edit_subject(
            backbone,
            scene,
            subjects[0].photos[0],
            config,
            callback=out.saving(callback),
            loss_fn=loss_fn,
            progress=progress,
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
        "mask": job.mask_source,
        "timings": out.timings,
        "ir_model_note": "IR term: " + ir_network,
    }
    out.write_json("metrics.json", metrics)
    if not result.complete:
        raise KeyboardInterrupt
    return metrics


def _reuse(spec: RunSpec, models: Models, progress: bool, callback, notify: Notify) -> dict:
    """Draw every prompt x seed of the job with the saved subject (stage two of prompt simplification), at the
    resolution it was learned at; nothing is optimized. The saved subject is checked before the model loads, and
    loaded (`siso.lora.load_saved_subject`) before the first write: one that does not fit leaves no output folder."""
    out, lora = spec.out, spec.lora
    check_lora_file(lora)
    info = read_subject_info(lora)
    if saved_ip_adapter(lora) is not None:
        check_ip_adapter(spec.config.model)
    config = dataclasses.replace(spec.config, resolution=info.get("resolution"))
    models.check_resolution(config.resolution, f"{lora} was")
    backbone = models.backbone(config)
    load_saved_subject(backbone, lora)
    out.write_json(
        "config.json",
        {
            "command": spec.command,
            "lora": str(lora),
            "model": config.model,
            "dtype": config.dtype,
            "quantize": config.memory.quantize,
            "job": spec.job.__dict__,
            "versions": versions(),
        },
    )
    metrics: dict = {"complete": False}
    try:
        metrics["images"] = out.generate_images(backbone, spec.job, progress)
        metrics["complete"] = True
    finally:
        out.write_json("metrics.json", metrics)
    return metrics
