"""``siso eval run --suite dreambench-refine``: refine another method's DreamBench images with siso and score each
before and after, resumably, sharded across processes.

The images come laid out as ``siso eval score`` reads any method's (`siso.eval.suites.generated_images`)::

    FROM/<item id>/<k>.png        e.g. FROM/backpack/00/0.png; the first ``num_images`` of each item, by name

Each image is a run (a ``refine`` `siso.runs.spec.RunSpec`, run by `siso.runs.run.run` as ``siso refine``'s is) with
the item's prompt and subject (its first photo, or every photo of its folder), whose region is the item's class
detected in the image (Grounding DINO + SAM, as ``siso refine --subject-class``) or, with ``region="all"``, the whole
image. Every run is on the suite's one `siso.runs.models.Models`, and the LoRA each leaves on the backbone is taken off
before the next. An item where the class is not found in one of its images is skipped, not fatal: the reason goes to
``subjects/<item id>/skipped.txt`` and is returned.

Each image is scored before and after (`siso.eval.gains`) as soon as its item is refined.

Layout under ``OUT``: ``config.json`` (the settings of the latest invocation), ``subjects/<item id>/`` with
``<k>/``, image k's refine run folder (`siso.runs.folder.RunFolder`, no iteration frames: ``input.png``, ``mask.png``,
``best.png``, ``metrics.json``, ``lora``, ...) and ``record.json`` (the item's scores), ``generated/<item id>/<k>.png``
(the refined images, which ``siso eval score --generated OUT/generated`` reads) and ``scores/`` (``items.jsonl``, one
record per item in suite order, ``summary.md`` and ``summary.json``, `siso.eval.gains.write_gain_summary`). An item
is refined into hidden folders beside its own (``.<name>.partial``, `siso.io.atomic_folder`) that replace them only
when every image of it is refined and scored: an interrupted item leaves nothing, and a rerun refines it again.
Items whose ``record.json`` exists are not refined again; one that lacks a metric asked now is scored again from its
run folders.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from accelerate import PartialState

from siso.config import RefineConfig
from siso.eval.gains import RefineScorer, item_record, write_gain_summary
from siso.eval.generate import process_share, suite_device, unit_subjects
from siso.eval.suites import EvalItem, SuiteError, generated_images
from siso.images import load_subject
from siso.io import atomic_folder, write_atomic, write_json
from siso.losses import describe_ir
from siso.runs.folder import RunFolder
from siso.runs.jobs import RefineJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER

SKIPPED = "skipped.txt"
RECORD = "record.json"


def images_to_refine(items: list[EvalItem], source: str | Path, num_images: int) -> dict[str, list[Path]]:
    """Item id -> the first ``num_images`` images of each item under ``source`` (by name).

    Raises:
        SuiteError: ``source`` is not a folder, or some items have fewer images (naming how many, and the first).
    """
    source = Path(source)
    if not source.is_dir():
        raise SuiteError(f"--from {source} is not a folder of images laid out as DIR/<item id>/<k>.png")
    images = {item.id: generated_images(source, item)[:num_images] for item in items}
    short = [item_id for item_id, paths in images.items() if len(paths) < num_images]
    if short:
        raise SuiteError(
            f"{source} lacks the images of {len(short)} of {len(items)} items (first: {source / short[0]} has "
            f"{len(images[short[0]])} of {num_images}); lay them out as DIR/<item id>/<k>.png"
        )
    return images


def refine_suite(
    items: list[EvalItem],
    source: str | Path,
    out: str | Path,
    config: RefineConfig,
    metric_names: list[str],
    metric_models: dict[str, str] | None = None,
    num_images: int = 1,
    region: str | None = None,
    all_photos: bool = False,
    detector: str = DEFAULT_DETECTOR,
    segmenter: str = DEFAULT_SEGMENTER,
    box_threshold: float = 0.3,
    progress: bool = True,
) -> tuple[Path, dict[str, str]]:
    """Refine the first ``num_images`` images of every item under ``source`` and score each before and after.

    Args:
        items: DreamBench items (`siso.eval.suites.load_dreambench`).
        source: Root of the images to refine, ``<source>/<item id>/<k>.png``.
        out: Run folder (resumed if it exists).
        config: The refine runs' settings; ``train_prompt`` is replaced by each item's prompt.
        metric_names: What to score (`siso.eval.gains.check_refine_metrics`).
        metric_models: Model id, folder or file per metric, overriding the defaults.
        num_images: Images refined per item.
        region: ``"all"``: refine the whole image; ``None``: the item's class, detected in the image.
        all_photos: Learn each subject from every photo of its folder, not only its first.
        detector, segmenter, box_threshold: Grounding DINO and SAM that find the region, and the detection score
            they need (the paper's 0.3).
        progress: Show a progress bar (main process only).

    Returns:
        The scores folder (``out/scores``), and item id -> why it was skipped for every item of ``items`` that has
        no record (on every process).

    Raises:
        SuiteError: ``source`` lacks images of some items (before anything is written).
    """
    images = images_to_refine(items, source, num_images)
    out = Path(out)
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        suite = {"suite": "dreambench-refine", "from": str(source), "num_images": num_images}
        suite.update(region=region or "detected", subject_photos="all" if all_photos else "1")
        write_json(
            out / "config.json",
            {**suite, "ir_network": describe_ir(config.similarity.ir_model), "siso": config.to_dict()},
        )

    def record(item: EvalItem) -> dict | None:
        path = out / "subjects" / item.id / RECORD
        return json.loads(path.read_text()) if path.is_file() else None

    def refined(found: dict | None) -> bool:
        return found is not None and len(found["images"]) == num_images

    def done(item: EvalItem) -> bool:
        found = record(item)
        return refined(found) and all(name in found["before"] or name in found for name in metric_names)

    pending = [item for item in items if not done(item)]
    models, config = Models(), dataclasses.replace(config, device=suite_device(config))
    scorer: RefineScorer | None = None
    for item in process_share(pending, "items", progress):
        scorer = scorer or RefineScorer(metric_names, metric_models or {}, config.device)
        folder = out / "subjects" / item.id
        paths = images[item.id]
        names = [str(p.relative_to(source)) for p in paths]
        if refined(record(item)):  # only a metric is new
            runs = [folder / str(k) for k in range(num_images)]
            write_json(folder / RECORD, item_record(item, names, [scorer(r, item) for r in runs]))
            continue
        try:
            # Whole or not at all, replacing an earlier attempt (and its skipped.txt): an interrupted item is removed.
            with atomic_folder(folder) as partial:
                subjects = unit_subjects(item, all_photos)
                for k, path in enumerate(paths):
                    job = RefineJob(
                        load_subject(path, what="image to refine"),
                        whole=region == "all",
                        prompt=item.prompt,
                        detector=detector,
                        segmenter=segmenter,
                        box_threshold=box_threshold,
                    )
                    spec = RunSpec(
                        "refine",
                        config,
                        RunFolder(partial / str(k), frames=False),
                        subjects,
                        job,
                        paths={"image": str(path)},
                        detector=detector,
                    )
                    backbone = models.backbone(config)
                    try:
                        run(spec, models, progress=False)
                    finally:
                        # The next image starts from the stock model (and add_lora refuses a module with an adapter).
                        backbone.pipe.unload_lora_weights()
                runs = [partial / str(k) for k in range(num_images)]
                write_json(partial / RECORD, item_record(item, names, [scorer(r, item) for r in runs]))
                with atomic_folder(out / "generated" / item.id) as copies:
                    for k, run_folder in enumerate(runs):
                        shutil.copyfile(run_folder / "best.png", copies / f"{k}.png")
        except MaskError as err:  # the class is not found in an image, or its region is unusable
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / SKIPPED, f"{err}\n")
    skipped = {
        item.id: (out / "subjects" / item.id / SKIPPED).read_text().strip()
        for item in items
        if not refined(record(item)) and (out / "subjects" / item.id / SKIPPED).is_file()
    }
    scores = out / "scores"
    if state.is_main_process:
        records = [found for item in items if refined(found := record(item))]
        scores.mkdir(exist_ok=True)
        write_atomic(scores / "items.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        header = f"dreambench-refine: {len(records)} of {len(items)} items, {num_images} image(s) each, from {source}"
        write_gain_summary(scores, records, skipped, header)
    state.wait_for_everyone()
    return scores, skipped
