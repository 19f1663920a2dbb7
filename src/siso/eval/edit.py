"""``siso eval run``'s editing half: edit every item of an editing suite with siso, resumably, sharded across processes.

One edit per item: its photo is inverted and one LoRA is learned with the item's prompt ("a photo of a <class>"),
starting from the stock backbone every time. The object to replace is the suite's mask file when there is one, else
the paper's mask: SAM's segmentation of the Grounding DINO detection of the item's class in the photo
(`siso.vision.segmenter.ObjectSegmenter`).

An item without a usable mask (nothing detected, or a mask that is empty, covers the whole photo, or vanishes at
the model's resolution) is skipped, not fatal: the reason goes to ``subjects/<item id>/skipped.txt`` and is
returned, and scoring then names the item among those without images (after scoring the rest).

Each edit is a run (an ``edit`` `siso.runs.spec.RunSpec` with the item's mask, run by `siso.runs.run.run` as
``siso edit``'s is); every item runs on the suite's one `siso.runs.models.Models` (the backbone and the similarity
networks load once), and the LoRA each run leaves on the backbone is taken off before the next item.

Layout under ``OUT``: ``generated/<item id>/0.png`` (the edit at model resolution, cropped to the photo's aspect) and
``subjects/<item id>/``, the item's run folder (`siso.runs.folder.RunFolder`): ``metrics.json``
(`siso.editing.EditResult.record`, with the inversion PSNR, plus the mask's source), ``best.png`` (the same edit),
``mask.png`` (the dilated mask the edit kept the background outside of), and the run's own ``config.json``,
``input.png``, ``inversion.png``, ``lora`` and ``loss.png`` (no iteration frames). An edit is written into a hidden
folder beside the item's (``.<name>.partial``) that replaces it only when the run completes
(`siso.io.atomic_folder`): an interrupted edit is removed. Items whose ``0.png`` exists are skipped on a rerun; it
is written last, atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from siso.compose import Subject
from siso.config import EditConfig
from siso.eval.generate import process_share, suite_device
from siso.eval.suites import EvalItem
from siso.images import load_subject
from siso.io import atomic_folder, write_atomic
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError, load_mask
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, ObjectSegmenter

SKIPPED = "skipped.txt"


def edit_suite(
    items: list[EvalItem],
    out: str | Path,
    config: EditConfig,
    detector: str = DEFAULT_DETECTOR,
    segmenter: str = DEFAULT_SEGMENTER,
    box_threshold: float = 0.3,
    progress: bool = True,
) -> tuple[Path, dict[str, str]]:
    """Edit every item's input photo with siso into ``out/generated/<item id>/0.png``.

    Args:
        items: Items of an editing suite (with ``input_image``).
        out: Run folder (resumed if it exists).
        config: Edit configuration; ``train_prompt`` is replaced by each item's prompt.
        detector, segmenter: Grounding DINO and SAM (Hub ids or folders) for items without a mask file; loaded
            at the first such item.
        box_threshold: Minimum detection score (the paper's 0.3).
        progress: Show a progress bar (main process only).

    Returns:
        The ``generated`` folder, and item id -> why it was skipped, for every item of ``items`` that has no
        edit (on every process).
    """
    out = Path(out)
    generated = out / "generated"
    generated.mkdir(parents=True, exist_ok=True)  # scored even when every item is skipped
    pending = [item for item in items if not (generated / item.id / "0.png").is_file()]
    models, config = Models(), dataclasses.replace(config, device=suite_device(config))
    objects: ObjectSegmenter | None = None
    for item in process_share(pending, "edits", progress):
        folder = out / "subjects" / item.id
        photo = load_subject(item.input_image, what="photo to edit")
        try:
            if item.mask is not None:
                mask, source = load_mask(item.mask, photo.size), str(item.mask)
            else:
                if objects is None:
                    objects = ObjectSegmenter(detector, segmenter, config.device, box_threshold)
                mask, source = objects.segment(photo, item.class_name), "detected"
                if mask is None or not mask.any():
                    raise MaskError(
                        f"no {item.class_name!r} detected in {item.input_image} (box threshold {box_threshold}): "
                        f"draw its mask as masks/{item.input_image.stem}.png in the suite folder"
                    )
            job = EditJob(photo, mask, source, None, item.class_name, item.prompt, detector, segmenter, box_threshold)
            subject = Subject(load_subject(item.subject_image), item.class_name, path=str(item.subject_image))
            paths = {"image": str(item.input_image), "subject": str(item.subject_image)}
            backbone = models.backbone(config)
            # Whole or not at all, replacing an earlier attempt (and its skipped.txt): an interrupted edit is removed.
            with atomic_folder(folder) as partial:
                spec = RunSpec(
                    "edit", config, RunFolder(partial, frames=False), [subject], job, paths=paths, detector=detector
                )
                try:
                    run(spec, models, progress=False)
                finally:
                    # The next item must start from the stock model (and add_lora refuses a module that has an adapter).
                    backbone.pipe.unload_lora_weights()
        except MaskError as err:  # unusable: nothing detected, or the mask vanishes at the model's resolution
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / SKIPPED, f"{err}\n")
            continue
        (generated / item.id).mkdir(parents=True, exist_ok=True)
        write_atomic(generated / item.id / "0.png", (folder / "best.png").read_bytes())  # the run's best image
    skipped = {
        item.id: (out / "subjects" / item.id / SKIPPED).read_text().strip()
        for item in items
        if not (generated / item.id / "0.png").is_file() and (out / "subjects" / item.id / SKIPPED).is_file()
    }
    return generated, skipped
