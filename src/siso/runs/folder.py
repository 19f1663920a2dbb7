"""A run folder: everything a SISO run writes, laid out so the run can be inspected and reproduced.

Layout::

    config.json          what reproduces the run (the command line, the SisoConfig, prompts, seeds, versions)
    metrics.json         per-iteration loss terms, stop reason, timings, "complete"
    best.png             the best iteration's image (optimization prompt)
    iterations/NNNN.png  the image of every iteration, written as it is made
    iterations.png       all iterations on one contact sheet
    loss.png             loss curve
    lora/                the subject: diffusers LoRA (pytorch_lora_weights.safetensors) + siso_subject.json, and
                         the IP-Adapter's image(s) (ip_adapter_image*.png) when the run started from one
    images/              final images, one per prompt x seed

An edit (an ``edit`` `siso.runs.spec.RunSpec`) writes the same files except ``images/``, plus
``input.png`` (the photo as the model saw it), ``mask.png`` (the dilated object mask), ``inversion.png`` (the inverted
photo denoised with no LoRA) and, with ``--composite``, ``best_uncomposited.png`` (``best.png`` is then the
composite). A composition of saved subjects (``compose``) writes ``config.json``, ``metrics.json``, ``images/`` and
``lora/`` as a composed subject folder (`siso.compose.saved`), plus, with a polish, what an optimization writes.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from siso.backbones import Backbone
from siso.images import contact_sheet, loss_plot
from siso.io import save_image, write_json
from siso.lora import save_lora
from siso.optimize import SisoResult
from siso.runs.jobs import GenerationJob


def versions() -> dict[str, str]:
    """The versions of siso and the libraries its results depend on, for config.json."""
    return {name: version(name) for name in ("siso", "torch", "diffusers", "transformers", "peft")}


class OutputExistsError(FileExistsError):
    """The output folder exists and may not be overwritten."""


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
    ``frames=False`` keeps no iteration frames (no ``iterations/`` and no contact sheet): ``eval run``'s many units.
    """

    path: Path
    overwrite: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    frames: bool = True

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
        if not self.frames:
            return
        (self.path / "iterations").mkdir(exist_ok=True)
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siso-frames")
        self._pending.append(self._writer.submit(self._write_frame, iteration, image))

    def saving(self, callback: Callable | None = None) -> Callable:
        """An iteration callback that writes each iteration's image (`save_iteration`), then calls ``callback`` (with
        (iteration, image, loss terms); what it returns stops the run)."""

        def on_iteration(iteration: int, image: Image.Image, terms: dict) -> bool | None:
            self.save_iteration(iteration, image)
            return callback(iteration, image, terms) if callback else None

        return on_iteration

    def _write_frame(self, iteration: int, image: Image.Image) -> None:
        save_image(image, self.path / "iterations" / f"{iteration:04d}.png")

    def save_image(self, name: str, image: Image.Image) -> None:
        """Write ``image`` as ``name`` (a path inside the folder) atomically."""
        save_image(image, self.path / name)

    def wait_for_frames(self) -> None:
        """Wait until every frame given to `save_iteration` is written (and raise a write's error, if any)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def save_optimization(
        self,
        result: SisoResult,
        backbone: Backbone,
        subject_info: dict,
        save_subject: Callable[[Path], object] | None = None,
    ) -> None:
        """Write the best image, the subject (the backbone's LoRA, with ``subject_info`` in its record; or what
        ``save_subject(folder)`` writes, a composition's), the contact sheet and the loss plot."""
        self.wait_for_frames()
        self.save_image("best.png", result.best_image)
        if save_subject is None:
            save_lora(backbone, self.path / "lora", **subject_info)
        else:
            save_subject(self.path / "lora")
        frames = sorted((self.path / "iterations").glob("*.png"))
        if frames:
            images = []
            for frame in frames:
                with Image.open(frame) as img:
                    images.append(img.convert("RGB"))
            self.save_image("iterations.png", contact_sheet(images, [f.stem for f in frames]))
        if not result.history:  # interrupted inside the first iteration, after its image: no loss to plot
            return
        terms = [k for k in result.history[0] if k not in ("iteration", "seconds")]
        self.save_image(
            "loss.png", loss_plot({k: [h[k] for h in result.history] for k in terms}, result.best_iteration)
        )

    def generate_images(
        self,
        backbone: Backbone,
        job: GenerationJob,
        progress: bool = True,
        draw: Callable[[str, int, int, float], Image.Image] | None = None,
    ) -> list[dict]:
        """Make every prompt x seed image into ``images/`` with ``draw(prompt, seed, steps, guidance)`` (default: the
        backbone's `generate`); returns one record per image."""
        draw = draw or backbone.generate
        (self.path / "images").mkdir(exist_ok=True)
        records = []
        pairs = [(i, p, s) for i, p in enumerate(job.prompts) for s in job.seeds]
        for index, prompt, seed in tqdm(pairs, desc="images", unit="img", disable=not progress or len(pairs) < 2):
            image = draw(prompt, seed, job.num_inference_steps, job.guidance_scale)
            name = f"images/{index:02d}-{_slug(prompt)}-seed{seed}.png"
            self.save_image(name, image)
            records.append({"file": name, "prompt": prompt, "seed": seed})
        return records


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"
