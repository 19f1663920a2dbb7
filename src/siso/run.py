"""A run folder: everything a SISO run writes, laid out so the run can be inspected and reproduced.

Layout::

    config.json          what reproduces the run (the command line, the SisoConfig, prompts, seeds, versions)
    metrics.json         per-iteration loss terms, stop reason, timings, "complete"
    best.png             the best iteration's image (optimization prompt)
    iterations/NNNN.png  the image of every iteration, written as it is made
    iterations.png       all iterations on one contact sheet
    loss.png             loss curve
    lora/                the subject: diffusers LoRA (pytorch_lora_weights.safetensors) + siso_subject.json
    images/              final images, one per prompt x seed

An edit (`run_edit` of a `siso.editing.EditJob`) writes the same files except ``images/``, plus ``input.png`` (the
photo as the model saw it), ``mask.png`` (the dilated object mask), ``inversion.png`` (the inverted photo denoised
with no LoRA) and, with ``--composite``, ``best_uncomposited.png`` (``best.png`` is then the composite).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from siso.backbones import Backbone, load_backbone, resolve_dtype
from siso.config import EditConfig, SisoConfig, check_seed
from siso.editing import EditJob, composite, edit_subject, prepare_scene, resolve_edit
from siso.fast import load_tiny_vae, tiny_vae_name
from siso.images import contact_sheet, loss_plot
from siso.jsonio import write_json
from siso.lora import check_lora_file, load_lora, read_subject_info, save_lora
from siso.losses import SimilarityLoss
from siso.memory import PeakMemory
from siso.optimize import IterationCallback, SisoResult, optimize_subject


class OutputExistsError(FileExistsError):
    """The output folder exists and may not be overwritten."""


@dataclass
class GenerationJob:
    """Final images to make: every prompt x seed, with ``num_inference_steps`` steps."""

    prompts: list[str]
    seeds: list[int]
    num_inference_steps: int = 1
    guidance_scale: float = 0.0

    def __post_init__(self):
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ValueError("at least one non-empty prompt is needed")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        for seed in self.seeds:
            check_seed(seed, "every seed")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")


def check_output_folder(path: str | Path) -> None:
    """Check that ``path`` is a folder or can be made one, before any slow work writes there.

    Raises:
        OutputExistsError: ``path`` is a file.
        ValueError: a parent of ``path`` is a file, or the nearest existing one is not writable.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is not a folder")
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not parent.is_dir():
        raise ValueError(f"cannot create output folder {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write output folder {path}: {parent} is not writable")


@dataclass
class RunFolder:
    """An output folder; refuses to reuse a non-empty folder unless ``overwrite`` (and then only a siso run's).

    The check happens at once, so a bad ``--out`` fails before any slow loading; the folder is created (and an
    earlier run in it removed) only at the first write, so a run that fails while loading leaves nothing behind.
    """

    path: Path
    overwrite: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        check_output_folder(self.path)
        if self._nonempty():
            if not self.overwrite:
                raise OutputExistsError(f"output folder {self.path} is not empty; pass --overwrite to replace it")
            if not (self.path / "config.json").is_file():
                raise OutputExistsError(
                    f"output folder {self.path} is not empty and has no siso config.json; refusing to delete it"
                )
        self._started = False
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def _nonempty(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def write_json(self, name: str, data: dict) -> None:
        """Write atomically (a reader never sees a half-written file); the first write creates the folder."""
        if not self._started:
            if self._nonempty():
                shutil.rmtree(self.path)  # an earlier siso run, allowed by --overwrite (checked above)
            self.path.mkdir(parents=True, exist_ok=True)
            self._started = True
        write_json(self.path / name, data)

    def save_iteration(self, iteration: int, image: Image.Image) -> None:
        """Write the frame in a background thread (PNG encoding stays off the optimization's critical path), beside
        its name, then rename it into place.

        A Ctrl-C / SIGTERM mid-write must not leave a truncated frame: the interrupted run's contact sheet reads them.
        `wait_for_frames` (called by `save_optimization`) waits for the writes.
        """
        (self.path / "iterations").mkdir(exist_ok=True)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siso-frames")
        self._pending.append(self._writer.submit(self._write_frame, iteration, image))

    def _write_frame(self, iteration: int, image: Image.Image) -> None:
        path = self.path / "iterations" / f"{iteration:04d}.png"
        partial = path.with_name(path.name + ".partial")
        image.save(partial, format="PNG")
        os.replace(partial, path)

    def wait_for_frames(self) -> None:
        """Wait until every frame given to `save_iteration` is written (and raise a write's error, if any)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def save_optimization(self, result: SisoResult, backbone: Backbone, modules, subject_info: dict) -> None:
        self.wait_for_frames()
        result.best_image.save(self.path / "best.png")
        save_lora(backbone, modules, self.path / "lora", **subject_info)
        frames = sorted((self.path / "iterations").glob("*.png"))
        if frames:
            images = []
            for frame in frames:
                with Image.open(frame) as img:
                    images.append(img.convert("RGB"))
            contact_sheet(images, [f.stem for f in frames]).save(self.path / "iterations.png")
        terms = [k for k in result.history[0] if k not in ("iteration", "seconds")]
        loss_plot({k: [h[k] for h in result.history] for k in terms}, result.best_iteration).save(
            self.path / "loss.png"
        )

    def generate_images(self, backbone: Backbone, job: GenerationJob, progress: bool = True) -> list[dict]:
        """Make every prompt x seed image into ``images/``; returns one record per image."""
        (self.path / "images").mkdir(exist_ok=True)
        records = []
        pairs = [(i, p, s) for i, p in enumerate(job.prompts) for s in job.seeds]
        for index, prompt, seed in tqdm(pairs, desc="images", unit="img", disable=not progress or len(pairs) < 2):
            image = backbone.generate(prompt, seed, job.num_inference_steps, job.guidance_scale)
            name = f"images/{index:02d}-{_slug(prompt)}-seed{seed}.png"
            image.save(self.path / name)
            records.append({"file": name, "prompt": prompt, "seed": seed})
        return records


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("siso", "torch", "diffusers", "transformers", "peft")}


def run_generate(
    out: RunFolder,
    config: SisoConfig,
    subject: Image.Image,
    job: GenerationJob | None,
    command: list[str] | None = None,
    subject_path: str | None = None,
    progress: bool = True,
    backbone: Backbone | None = None,
    loss_fn: SimilarityLoss | None = None,
    callback: IterationCallback | None = None,
) -> dict:
    """Optimize a subject, save it, then generate every prompt x seed of ``job`` (if any) with the learned LoRA.

    On Ctrl-C / SIGTERM (as KeyboardInterrupt) during optimization, the best-so-far image, LoRA, config and
    metrics are still written, with ``"complete": false`` in metrics.json.

    Args:
        backbone: An already loaded backbone without LoRA, instead of loading ``config.model`` (the app's); it
            carries the best LoRA after.
        loss_fn: The similarity loss, already set to ``subject`` (instead of loading its networks).
        callback: Also called after every iteration, as `optimize_subject`'s (returning True stops the run, which
            keeps the best so far).

    Returns:
        The metrics written to ``metrics.json``.
    """
    start = time.perf_counter()
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, config.device))  # recorded as used
    if backbone is None:
        backbone = load_backbone(config.model, config.dtype, config.device, config.resolution, config.memory.quantize)
    loss_fn = loss_fn or SimilarityLoss(config.similarity, subject, backbone.device, backbone.dtype)
    loss_vae = None
    if config.fast.enabled:  # config.json records the tiny VAE used
        fast = dataclasses.replace(config.fast, tiny_vae=tiny_vae_name(config.fast, type(backbone)))
        config = dataclasses.replace(config, fast=fast)
        loss_vae = load_tiny_vae(fast.tiny_vae, backbone)
    out.timings["load_seconds"] = time.perf_counter() - start
    out.write_json(
        "config.json",
        {
            "command": command,
            "subject": subject_path,
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
        result = optimize_subject(
            backbone, subject, config, callback=on_iteration, loss_fn=loss_fn, progress=progress, loss_vae=loss_vae
        )
    out.timings["optimize_seconds"] = time.perf_counter() - start
    metrics = {
        "complete": False,
        **result.record(),
        **peak.record(),
        "timings": out.timings,
        "ir_model_note": _ir_note(config),
    }
    modules = {name: getattr(backbone.pipe, name) for name in result.best_lora}
    out.save_optimization(result, backbone, modules, {"model": config.model, "train_prompt": config.train_prompt})
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
    subject: Image.Image,
    command: list[str] | None = None,
    paths: dict | None = None,
    progress: bool = True,
    backbone: Backbone | None = None,
    loss_fn: SimilarityLoss | None = None,
    callback: IterationCallback | None = None,
) -> dict:
    """Edit a photo: find the object mask, invert the photo, optimize the subject LoRA, write the run folder.

    ``config.train_prompt`` is replaced by the job's prompt (given, or "a photo of a {subject class}").
    Ctrl-C / SIGTERM (as KeyboardInterrupt) keeps the best-so-far edit, like `run_generate`. ``backbone``,
    ``loss_fn`` and ``callback`` as `run_generate`'s (the callback sees the crop of each edit).

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        MaskError: no usable mask (nothing detected, or a mask that vanishes at the model resolution).
    """
    start = time.perf_counter()
    mask, prompt, names = resolve_edit(job, subject, config.device)
    config = dataclasses.replace(config, train_prompt=prompt, dtype=resolve_dtype(config.dtype, config.device))
    if backbone is None:
        backbone = load_backbone(config.model, config.dtype, config.device, config.resolution, config.memory.quantize)
    scene = prepare_scene(job.scene, mask, backbone.resolution, config.edit.mask_dilation)
    loss_fn = loss_fn or SimilarityLoss(config.similarity, subject, backbone.device, backbone.dtype)
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
    scene.input_image.save(out.path / "input.png")
    scene.mask_image.save(out.path / "mask.png")

    def on_iteration(iteration: int, image: Image.Image, terms: dict) -> bool | None:
        out.save_iteration(iteration, image)
        return callback(iteration, image, terms) if callback else None

    start = time.perf_counter()
    with PeakMemory(backbone.device) as peak:
        result = edit_subject(
            backbone, scene, subject, config, callback=on_iteration, loss_fn=loss_fn, progress=progress
        )
    out.timings["edit_seconds"] = time.perf_counter() - start
    result.reconstruction.save(out.path / "inversion.png")
    modules = {name: getattr(backbone.pipe, name) for name in result.best_lora}
    out.save_optimization(result, backbone, modules, {"model": config.model, "train_prompt": prompt})
    if config.edit.composite:
        result.best_image.save(out.path / "best_uncomposited.png")
        composite(result.best_image, scene.input_image, scene.mask_image, config.edit.feather).save(
            out.path / "best.png"
        )
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
        quantize: Quantize the base model's denoiser (`siso.quantize`); the LoRA is loaded in full precision.

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
