"""``siso eval run --suite dreambench-multi --from-saved``: learning a pair's subjects together, measured against
composing subjects learned alone.

Three arms draw the same items with the same seeds and are scored the same way (`siso.eval.score`):

- ``joint``: today's ``eval run`` on the suite (`siso.eval.generate`): an item's subjects learned together, each in
  its box (per-prompt: one LoRA per item; two-stage: one per pair);
- ``composed``: each subject learned alone, once ("a photo of a <class>", no box), kept, and reused by every item it
  appears in; each unit of the same plan (`siso.eval.generate.plan`) is then a ``compose`` run
  (`siso.runs.compose`): the saved subjects drawn together, each in the box the joint arm gives it, nothing learned;
- ``polished``: the same compose runs with up to ``polish`` iterations of the composed loss (with the unit's train
  prompt, as the joint arm learns with), optimizing every subject's LoRA through the regional forward.

`siso.eval.comparison` writes the three side by side. Every run is on one `siso.runs.models.Models`: the backbone
and the similarity networks load once; the adapters a run leaves on the backbone are taken off before the next.

Layout under ``OUT``::

    config.json, generated/, subjects/, scores/     the joint arm: ``eval run`` without ``--from-saved`` (so an
                                                    earlier run of the suite in OUT is resumed, not redone)
    saved/<subject>/                                each subject learned alone: a learn run folder, whose ``lora/``
                                                    is the saved subject every composition reads
    composed/, polished/                            each: config.json, subjects/<unit>/ (the compose run folders),
                                                    generated/<item id>/<k>.png, scores/
    summary.md, summary.json                        the arms side by side (`siso.eval.comparison`)

Resuming and sharding are as ``eval run``'s: a subject is learned, and a unit composed, into a hidden folder that
replaces its own only when the run completes (`siso.io.atomic_folder`); a saved subject, a unit's run folder that
holds all its images, and finished images are not made again; under ``accelerate launch`` the subjects, then the
units, are split across processes (every process waits for all the subjects before composing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate import PartialState

from siso.compose import Subject
from siso.compose.regional import EDGE
from siso.compose.saved import SavedSubject, read_saved
from siso.config import SisoConfig
from siso.eval.comparison import ARMS, arm_folder, write_comparison
from siso.eval.generate import Unit, default_protocol, generate_suite, plan, process_share, suite_device, unit_metrics
from siso.eval.multi import BoxedSubject, MultiItem
from siso.eval.score import score
from siso.images import load_subject
from siso.io import atomic_folder, write_atomic, write_json
from siso.lora import WEIGHTS_FILE, check_lora_file, unload_saved_subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec

POLISH = 10  # the polished arm's iteration cap (early stopping as the learning's: --patience, --min-improvement)


def from_saved_suite(
    items: list[MultiItem],
    out: str | Path,
    config: SisoConfig,
    metric_names: list[str],
    metric_models: dict[str, str] | None = None,
    num_images: int = 1,
    num_inference_steps: int | None = None,
    protocol: str | None = None,
    polish: int = POLISH,
    progress: bool = True,
    all_photos: bool = False,
    **scoring,
) -> Path:
    """Draw every item in the three arms, score each, and write them side by side; returns ``OUT/summary.md``.

    Args:
        items: Multi-subject items (dreambench-multi's).
        out: Run folder (resumed if it exists).
        config: The settings of every run: learning (both arms), composing and polishing.
        metric_names, metric_models: What to score each arm with (`siso.eval.score.score`'s).
        num_images, num_inference_steps, protocol, all_photos: As `siso.eval.generate.generate_suite`'s, for every
            arm.
        polish: The polished arm's iteration cap (>= 1).
        progress: Show progress bars (main process only).
        scoring: More of `siso.eval.score.score`'s arguments (``device``, ``crop``, ``reference``, ...).

    Raises:
        ValueError: an item with one subject, ``polish`` < 1, or an IP-Adapter (before anything loads).
        SuiteError: as `siso.eval.score.score`'s.
    """
    out = Path(out)
    protocol = protocol or default_protocol(items)
    _draw(items, out, config, num_images, num_inference_steps, protocol, polish, progress, all_photos)
    units = [unit.name for unit in plan(items, protocol)]
    for arm in ARMS:
        folder = arm_folder(out, arm)
        # The per-LoRA table: the joint arm's learning, the polished arm's polish (the composed arm optimizes nothing).
        runs = unit_metrics(folder, units) if arm != "composed" else None
        score(
            items,
            folder / "generated",
            folder / "scores",
            metric_names,
            metric_models,
            progress=progress,
            optimizations=runs,
            **scoring,
        )
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        write_comparison(out, items, protocol, polish, num_images)
    state.wait_for_everyone()
    return out / "summary.md"


def _draw(items, out: Path, config, num_images, num_inference_steps, protocol, polish, progress, all_photos) -> None:
    """Every arm's images, on one set of models (freed on return, before scoring)."""
    if any(len(item.subjects) < 2 for item in items):
        raise ValueError("--from-saved composes several subjects an item; an item here has one")
    if isinstance(polish, bool) or not isinstance(polish, int) or polish < 1:
        raise ValueError(f"--polish takes a whole number of iterations >= 1, got {polish!r}")
    if config.ip_adapter.enabled:
        raise ValueError("--from-saved composes its subjects by region; an IP-Adapter conditions the whole image")
    models = Models()
    generate_suite(items, out, config, num_images, num_inference_steps, protocol, progress, all_photos, models)
    _compose_arms(items, out, config, num_images, num_inference_steps, protocol, polish, progress, all_photos, models)


def _compose_arms(
    items: list[MultiItem],
    out: Path,
    config: SisoConfig,
    num_images: int,
    num_inference_steps: int | None,
    protocol: str,
    polish: int,
    progress: bool,
    all_photos: bool,
    models: Models,
) -> None:
    """The composed and polished arms: learn each subject their pending units need alone (once), then run those
    units' compositions, and lay their images out as ``<arm>/generated/<item id>/<k>.png``."""
    units = plan(items, protocol)
    steps = num_inference_steps or config.optim.num_inference_steps
    seeds = [config.optim.seed + k for k in range(num_images)]
    arms = {"composed": 0, "polished": polish}
    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        photos = "all" if all_photos else "1"
        for arm, iterations in arms.items():
            (out / arm).mkdir(parents=True, exist_ok=True)
            facts = {"arm": arm, "polish": iterations, "edge": EDGE, "protocol": protocol, "subject_photos": photos}
            facts.update(num_images=num_images, num_inference_steps=steps, saved="saved/<subject>/lora")
            write_json(out / arm / "config.json", {**facts, "siso": config.to_dict()})

    def todo(arm: str, unit: Unit) -> list[tuple[MultiItem, int, Path]]:
        generated = out / arm / "generated"
        wanted = [(item, seed, generated / item.id / f"{seed - seeds[0]}.png") for item in unit.items for seed in seeds]
        return [w for w in wanted if not w[2].is_file()]

    pending = [(arm, unit) for arm in arms for unit in units if todo(arm, unit)]
    subjects = {s.subject: s for _, unit in pending for s in unit.items[0].subjects}
    saved = {name: out / "saved" / name / "lora" for name in subjects}
    for folder in saved.values():  # a damaged saved subject fails now, not after the models have loaded
        if (folder / WEIGHTS_FILE).is_file():
            check_lora_file(folder)
    to_learn = [s for name, s in subjects.items() if not (saved[name] / WEIGHTS_FILE).is_file()]
    device_config = dataclasses.replace(config, device=suite_device(config))
    for subject in process_share(to_learn, "saved subjects", progress):
        _learn_alone(subject, out / "saved" / subject.subject, device_config, models, all_photos)
    for arm, unit in process_share(pending, "compositions", progress):
        folder = out / arm / "subjects" / unit.name
        job = GenerationJob([item.prompt for item in unit.items], seeds, steps, config.optim.guidance_scale)
        drawn = _drawn(folder, job)
        if drawn is None:
            unit_config = dataclasses.replace(device_config, train_prompt=unit.train_prompt)
            composed = [_saved(saved[s.subject], s) for s in unit.items[0].subjects]
            with atomic_folder(folder) as partial:
                folder_run = RunFolder(partial, frames=False)
                spec = RunSpec("compose", unit_config, folder_run, job=job, saved=composed, polish=arms[arm])
                run(spec, models, progress=False)
            unload_saved_subject(models.loaded)
            drawn = _drawn(folder, job)
        for item, seed, path in todo(arm, unit):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, drawn[item.prompt, seed].read_bytes())


def _learn_alone(subject: BoxedSubject, folder: Path, config: SisoConfig, models: Models, all_photos: bool) -> None:
    """Learn ``subject`` alone into ``folder`` (a learn run: its photo, "a photo of a <class>", no box), whole or not
    at all, and take its LoRA off the backbone."""
    files = subject.references if all_photos else (subject.photo,)
    photos = [load_subject(f) for f in files]
    alone = Subject(photos, subject.class_name, path=str(subject.photo), files=[str(f) for f in files])
    config = dataclasses.replace(config, train_prompt=f"a photo of a {subject.class_name}")
    with atomic_folder(folder) as partial:
        run(RunSpec("learn", config, RunFolder(partial, frames=False), [alone]), models, progress=False)
    unload_saved_subject(models.loaded)


def _saved(folder: Path, subject: BoxedSubject) -> SavedSubject:
    """The saved subject in ``folder``, in the item's box, with the suite's class (a subject learned alone records
    none: the composition names its loss terms and records it by class)."""
    [saved] = read_saved(folder, subject.subject, subject.box)
    saved.info = {**saved.info, "class": subject.class_name}
    return saved


def _drawn(folder: Path, job: GenerationJob) -> dict[tuple[str, int], Path] | None:
    """(prompt, seed) -> image of a finished compose run folder that drew every image of ``job``; else ``None``."""
    if not (folder / "metrics.json").is_file():
        return None
    records = json.loads((folder / "metrics.json").read_text()).get("images", [])
    drawn = {(r["prompt"], r["seed"]): folder / r["file"] for r in records}
    return drawn if all((prompt, seed) in drawn for prompt in job.prompts for seed in job.seeds) else None
