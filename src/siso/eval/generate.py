"""``siso eval run``'s generation half: make every item's images with siso, resumably, sharded across processes.

Two protocols:
- ``two-stage`` (default for single-subject suites, paper Sec. 3.3): per subject, optimize once with "a photo of a
  <class>" from the subject photo, then generate every prompt of that subject with the learned LoRA;
- ``per-prompt`` (default for multi-subject items): optimize separately for every item, with the item's own prompt
  (plain SISO).

A multi-subject item (`siso.eval.multi.MultiItem`) is learned as ``siso generate`` learns several subjects with
boxes (`siso.runs.run.run`): `siso.losses.CompositionLoss` on each subject's box, in whole pixels of the
model's image; its two-stage unit is the pair, learned from "a photo of a <class A> and a <class B>". Only the image
of the optimization's seed (image 0, per-prompt) is the one the boxes were optimized on.

Each subject is learned from its first photo (the paper's protocol), or with ``all_photos`` from every photo of its
folder (the item's ``references``: the loss averages over them). With ``config.negatives`` the loss gets the negative
targets; the ``generic`` ones are drawn once per class by the frozen model and kept for the whole suite. With
``config.ip_adapter`` (single-subject items) each LoRA is learned over a frozen IP-Adapter that sees the same photos;
its saved subject records the adapter, and a rerun loads both.

Each unit's learning is a run (a ``learn`` `siso.runs.spec.RunSpec`, run by `siso.runs.run.run` as ``siso generate``'s
is), and its drawing uses the LoRA the run leaves on the backbone. Every unit of the suite runs on one
`siso.runs.models.Models`: the backbone and the similarity networks load once and stay loaded between units (the
backbone is loaded again after a unit whose subject carries an IP-Adapter, learned or loaded). A unit's folder keeps
no iteration frames (a suite has hundreds of units).

Layout under ``OUT``: ``config.json`` (the settings of the latest invocation), ``generated/<item id>/<k>.png`` (seed
``seed + k``) and ``subjects/<unit>/``, the unit's run folder (`siso.runs.folder.RunFolder`): ``lora`` (the learned
LoRA, reused when present; its ``siso_subject.json`` lists the photos it was learned from), ``metrics.json`` (loss
history with each iteration's seconds, stop reason), ``best.png``, ``negatives/<term>-<k>.png`` (the generic
negatives it used), the run's own ``config.json``, ``iterations/``, ``iterations.png`` and ``loss.png``, and
``drawing.json`` (``seconds_per_image``: the wall time of drawing the unit's images with its LoRA, per image, as the
latest invocation that drew some measured it). A unit is learned into a hidden folder beside its own
(``.<name>.partial``) that replaces it only when the run completes (`siso.io.atomic_folder`): an interrupted unit is
removed, so no LoRA that looks learned is left half done, and a rerun learns it again. Finished images and saved
LoRAs are skipped on a rerun; images are written to a temporary name and renamed, so a crash never leaves a
half-written PNG that looks done.

The pieces both halves of ``eval run`` share (`process_share`, `suite_device`) live here; the editing half is
`siso.eval.edit`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from siso.backbones import check_ip_adapter
from siso.compose import Subject
from siso.config import SisoConfig
from siso.eval.multi import MultiItem
from siso.eval.suites import EvalItem
from siso.images import load_subject
from siso.io import atomic_folder, save_image, write_json
from siso.lora import WEIGHTS_FILE, check_lora_file, load_saved_subject
from siso.losses import describe_ir
from siso.runs.folder import RunFolder
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec

PROTOCOLS = ("two-stage", "per-prompt")
DRAWING_FILE = "drawing.json"  # a unit's seconds per image drawn, as its latest drawing measured them


@dataclass(frozen=True)
class Unit:
    """One optimization: a LoRA learned with ``train_prompt`` and used for ``items``."""

    name: str
    train_prompt: str
    items: tuple[EvalItem | MultiItem, ...]


def default_protocol(items: list[EvalItem | MultiItem]) -> str:
    """Per-prompt for multi-subject items, else two-stage."""
    return "per-prompt" if any(isinstance(item, MultiItem) for item in items) else "two-stage"


def plan(items: list[EvalItem | MultiItem], protocol: str | None = None) -> list[Unit]:
    """Group items into optimization units (one per subject, or per subject pair, or one per item); ``None``: the
    `default_protocol`."""
    protocol = protocol or default_protocol(items)
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


def suite_device(config: SisoConfig) -> str:
    """``config.device``, else this process's accelerator under ``accelerate launch``, else cpu."""
    return config.device or str(PartialState(cpu=not torch.cuda.is_available()).device)


def unit_subjects(item: EvalItem | MultiItem, all_photos: bool = False) -> list[Subject]:
    """The subjects a unit learns from ``item``: each from its first photo (or ``all_photos``), with its class (and,
    for a multi-subject item, its box)."""
    if isinstance(item, MultiItem):
        files = [s.references if all_photos else (s.photo,) for s in item.subjects]
        return [
            Subject([load_subject(f) for f in fs], s.class_name, s.box, str(s.photo), files=[str(f) for f in fs])
            for s, fs in zip(item.subjects, files, strict=True)
        ]
    files = item.references if all_photos else (item.subject_image,)
    return [Subject([load_subject(f) for f in files], item.class_name, files=[str(f) for f in files])]


def unit_metrics(out: str | Path, names: Sequence[str]) -> list[dict]:
    """The ``subjects/<name>/metrics.json`` of each unit (or edited item) of ``names`` under run folder ``out`` that
    has one (the optimizations an ``eval run`` summary reports on)."""
    files = [Path(out) / "subjects" / name / "metrics.json" for name in names]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def generate_suite(
    items: list[EvalItem | MultiItem],
    out: str | Path,
    config: SisoConfig,
    num_images: int = 1,
    num_inference_steps: int | None = None,
    protocol: str | None = None,
    progress: bool = True,
    all_photos: bool = False,
    models: Models | None = None,
) -> Path:
    """Generate ``num_images`` images per item with siso into ``out/generated``; returns that folder.

    Args:
        items: Suite items.
        out: Run folder (resumed if it exists).
        config: Run configuration; ``config.train_prompt`` is replaced per unit, ``config.optim.seed`` is the
            optimization seed and the first image's seed; ``config.negatives`` go into every unit's loss.
        num_images: Images per item (seeds ``seed .. seed + num_images - 1``).
        num_inference_steps: Steps of the final images (default: the optimization's).
        protocol: ``two-stage`` or ``per-prompt``; ``None``: per-prompt for multi-subject items, else two-stage.
        progress: Show progress bars (main process only).
        all_photos: Learn each subject from every photo of its folder (``references``), not only its first.
        models: The models to run on, kept for what runs after (``eval run --from-saved``); ``None``: the suite's
            own, loaded at the first unit that needs them.

    Raises:
        ValueError: ``num_images`` < 1; an IP-Adapter for multi-subject items or a family that takes none (before
            anything loads).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if config.ip_adapter.enabled:
        if any(isinstance(item, MultiItem) for item in items):
            raise ValueError(
                "an IP-Adapter start takes one subject (its photos are the adapter's image); "
                "multi-subject items have several"
            )
        check_ip_adapter(config.model)
    out = Path(out)
    generated = out / "generated"
    protocol = protocol or default_protocol(items)
    units = plan(items, protocol)
    steps = num_inference_steps or config.optim.num_inference_steps
    seeds = [config.optim.seed + k for k in range(num_images)]
    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        suite = {"protocol": protocol, "subject_photos": "all" if all_photos else "1", "num_images": num_images}
        suite.update(num_inference_steps=steps, ir_network=describe_ir(config.similarity.ir_model))
        write_json(out / "config.json", {**suite, "siso": config.to_dict()})

    def todo(unit: Unit) -> list[tuple[EvalItem, int, Path]]:
        wanted = [(item, seed, generated / item.id / f"{seed - seeds[0]}.png") for item in unit.items for seed in seeds]
        return [w for w in wanted if not w[2].is_file()]

    pending = [unit for unit in units if todo(unit)]
    for unit in pending:  # a damaged saved LoRA fails now, not after the models have loaded
        if (out / "subjects" / unit.name / "lora" / WEIGHTS_FILE).is_file():
            check_lora_file(out / "subjects" / unit.name / "lora")
    # The suite's models, loaded at the first unit that needs them (a fully resumed run loads nothing).
    models, device_config = models or Models(), dataclasses.replace(config, device=suite_device(config))
    for unit in process_share(pending, "subjects", progress):
        if models.loaded is not None and models.loaded.ip_adapter is not None:
            # The adapter's image is the last subject's, and the encoder that would embed another's is gone.
            models.drop_backbone()
        backbone = models.backbone(device_config)
        folder = out / "subjects" / unit.name
        if (folder / "lora" / WEIGHTS_FILE).is_file():
            load_saved_subject(backbone, folder / "lora")  # with the IP-Adapter it was learned over, if any
        else:
            unit_config = dataclasses.replace(device_config, train_prompt=unit.train_prompt)
            subjects = unit_subjects(unit.items[0], all_photos)
            # Whole or not at all: an interrupted unit (whose run saves its best so far) or a crash leaves no LoRA
            # that looks learned, and a rerun learns the unit again.
            with atomic_folder(folder) as partial:
                run(RunSpec("learn", unit_config, RunFolder(partial, frames=False), subjects), models, progress=False)
        drawn, start = todo(unit), time.perf_counter()
        for item, seed, path in drawn:
            image = backbone.generate(item.prompt, seed, steps, config.optim.guidance_scale)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(image, path)
        write_json(folder / DRAWING_FILE, {"seconds_per_image": (time.perf_counter() - start) / len(drawn)})
        backbone.pipe.unload_lora_weights()
    return generated
