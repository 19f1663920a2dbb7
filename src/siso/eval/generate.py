"""``siso eval run``'s generation half: make every item's images with siso, resumably, sharded across processes.

Two protocols:
- ``two-stage`` (default for single-subject suites, paper Sec. 3.3): per subject, optimize once with "a photo of a
  <class>" from the subject photo, then generate every prompt of that subject with the learned LoRA;
- ``per-prompt`` (default for multi-subject items): optimize separately for every item, with the item's own prompt
  (plain SISO).

A multi-subject item (`siso.eval.multi.MultiItem`) is learned as ``siso generate`` learns several subjects with
boxes (`siso.runs.run.run_generate`): `siso.losses.CompositionLoss` on each subject's box, in whole pixels of the
model's image; its two-stage unit is the pair, learned from "a photo of a <class A> and a <class B>". Only the image
of the optimization's seed (image 0, per-prompt) is the one the boxes were optimized on.

Layout under ``OUT``: ``generated/<item id>/<k>.png`` (seed ``seed + k``), ``subjects/<unit>/lora`` (the learned
LoRA, reused when present) and ``subjects/<unit>/metrics.json`` (loss history, stop reason). Finished images and
saved LoRAs are skipped on a rerun; images are written to a temporary name and renamed, so a crash never leaves a
half-written PNG that looks done.

The pieces both halves of ``eval run`` share (`process_share`, `SuiteModels`) live here; the editing half is
`siso.eval.edit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from siso.backbones import Backbone, load_backbone
from siso.compose import Subject, subject_names
from siso.config import SisoConfig
from siso.eval.multi import MultiItem
from siso.eval.suites import EvalItem
from siso.images import load_subject
from siso.io import save_image, write_json
from siso.lora import WEIGHTS_FILE, check_lora_file, load_lora, save_lora
from siso.losses import CompositionLoss, Embedding, SubjectLosses, load_nets
from siso.optimize import optimize_generation

PROTOCOLS = ("two-stage", "per-prompt")


@dataclass(frozen=True)
class Unit:
    """One optimization: a LoRA learned with ``train_prompt`` and used for ``items``."""

    name: str
    train_prompt: str
    items: tuple[EvalItem | MultiItem, ...]


def plan(items: list[EvalItem | MultiItem], protocol: str) -> list[Unit]:
    """Group items into optimization units (one per subject, or per subject pair, or one per item)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "per-prompt":
        return [Unit(item.id, item.prompt, (item,)) for item in items]
    subjects: dict[str, list[EvalItem | MultiItem]] = {}
    for item in items:
        subjects.setdefault(item.subject, []).append(item)
    return [
        Unit(s, g[0].train_prompt if isinstance(g[0], MultiItem) else f"a photo of a {g[0].class_name}", tuple(g))
        for s, g in subjects.items()
    ]


def process_share(work: list, desc: str, progress: bool = True) -> Iterator:
    """This process's share of ``work`` (all of it without ``accelerate launch``), with a progress bar on the main
    process. Every process must have planned ``work`` from the same files: all wait for each other before the first
    entry (so nobody writes before everyone has planned) and after the last."""
    state = PartialState(cpu=not torch.cuda.is_available())
    state.wait_for_everyone()
    with state.split_between_processes(work) as mine:
        yield from tqdm(mine, desc=desc, disable=not (progress and state.is_main_process))
    state.wait_for_everyone()


class SuiteModels:
    """The backbone and similarity loss of a suite run, loaded at first use: a fully resumed run loads nothing.

    Attributes:
        config: The run's configuration.
        device: ``config.device``, else this process's accelerator under ``accelerate launch``, else cpu.
    """

    def __init__(self, config: SisoConfig):
        self.config = config
        self.device = config.device or str(PartialState(cpu=not torch.cuda.is_available()).device)

    @cached_property
    def backbone(self) -> Backbone:
        config = self.config
        return load_backbone(config.model, config.dtype, self.device, config.resolution, config.memory.quantize)

    @cached_property
    def similarity(self) -> SubjectLosses:
        """The similarity loss, set to a subject by calling it (its networks load at the first subject)."""
        return SubjectLosses(self.config.similarity, self.backbone.device, self.backbone.dtype)

    @cached_property
    def nets(self) -> tuple[dict[str, Embedding], dict[str, float]]:
        """The similarity networks and their weights (`siso.losses.load_nets`), for the multi-subject losses."""
        return load_nets(self.config.similarity, self.backbone.device, self.backbone.dtype)

    def composition(self, item: MultiItem) -> tuple[CompositionLoss, list[dict]]:
        """The loss of ``item``'s subjects in their boxes, as `siso.runs.run.run_generate` builds it, and what the
        saved subject records of each (class, box, loss term)."""
        side = self.backbone.resolution
        subjects = [Subject(load_subject(s.photo), s.class_name, s.box, str(s.photo)) for s in item.subjects]
        boxes = [s.box.pixels(side, side) for s in subjects]
        terms = subject_names([s.class_name for s in subjects])
        nets, weights = self.nets
        loss = CompositionLoss(nets, [s.image for s in subjects], boxes, terms, weights, self.config.compose)
        records = [{**s.record(), "box_pixels": b, "term": t} for s, b, t in zip(subjects, boxes, terms, strict=True)]
        return loss, records


def generate_suite(
    items: list[EvalItem | MultiItem],
    out: str | Path,
    config: SisoConfig,
    num_images: int = 1,
    num_inference_steps: int | None = None,
    protocol: str | None = None,
    progress: bool = True,
) -> Path:
    """Generate ``num_images`` images per item with siso into ``out/generated``; returns that folder.

    Args:
        items: Suite items.
        out: Run folder (resumed if it exists).
        config: Run configuration; ``config.train_prompt`` is replaced per unit, ``config.optim.seed`` is the
            optimization seed and the first image's seed.
        num_images: Images per item (seeds ``seed .. seed + num_images - 1``).
        num_inference_steps: Steps of the final images (default: the optimization's).
        protocol: ``two-stage`` or ``per-prompt``; ``None``: per-prompt for multi-subject items, else two-stage.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    out = Path(out)
    generated = out / "generated"
    if protocol is None:
        protocol = "per-prompt" if any(isinstance(item, MultiItem) for item in items) else "two-stage"
    units = plan(items, protocol)
    steps = num_inference_steps or config.optim.num_inference_steps
    seeds = [config.optim.seed + k for k in range(num_images)]

    def todo(unit: Unit) -> list[tuple[EvalItem, int, Path]]:
        wanted = [(item, seed, generated / item.id / f"{seed - seeds[0]}.png") for item in unit.items for seed in seeds]
        return [w for w in wanted if not w[2].is_file()]

    pending = [unit for unit in units if todo(unit)]
    for unit in pending:  # a damaged saved LoRA fails now, not after the models have loaded
        if (out / "subjects" / unit.name / "lora" / WEIGHTS_FILE).is_file():
            check_lora_file(out / "subjects" / unit.name / "lora")
    models = SuiteModels(config)
    for unit in process_share(pending, "subjects", progress):
        backbone = models.backbone
        folder = out / "subjects" / unit.name
        lora = folder / "lora"
        if (lora / WEIGHTS_FILE).is_file():
            load_lora(backbone, lora)
        else:
            unit_config = dataclasses.replace(config, train_prompt=unit.train_prompt)
            first = unit.items[0]
            info = {}
            if isinstance(first, MultiItem):
                loss_fn, info["subjects"] = models.composition(first)
            else:
                loss_fn = models.similarity(load_subject(first.subject_image))
            result = optimize_generation(backbone, loss_fn, unit_config, progress=False)
            if not result.complete:
                raise KeyboardInterrupt  # save nothing half-learned: a rerun optimizes this unit again
            # Whole or not at all: a crash mid-save must not leave a LoRA that looks done.
            save_lora(backbone, lora, model=config.model, train_prompt=unit.train_prompt, **info)
            write_json(folder / "metrics.json", result.record())
            save_image(result.best_image, folder / "best.png")
        for item, seed, path in todo(unit):
            image = backbone.generate(item.prompt, seed, steps, config.optim.guidance_scale)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(image, path)
        backbone.pipe.unload_lora_weights()
    return generated
