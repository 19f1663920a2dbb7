"""``siso eval run``'s editing half: edit every item of an editing suite with siso, resumably, sharded across processes.

One edit per item: its photo is inverted and one LoRA is learned with the item's prompt ("a photo of a <class>"),
starting from the stock backbone every time. The object to replace is the suite's mask file when there is one, else
the paper's mask: SAM's segmentation of the Grounding DINO detection of the item's class in the photo
(`siso.vision.segmenter.ObjectSegmenter`).

An item without a usable mask (nothing detected, or a mask that is empty, covers the whole photo, or vanishes at
the model's resolution) is skipped, not fatal: the reason goes to ``subjects/<item id>/skipped.txt`` and is
returned, and scoring then names the item among those without images (after scoring the rest).

Layout under ``OUT``: ``generated/<item id>/0.png`` (the edit at model resolution, cropped to the photo's aspect),
``subjects/<item id>/metrics.json`` (`siso.editing.EditResult.record`, with the inversion PSNR, plus the mask's
source), ``best.png`` (the same edit) and ``mask.png`` (the dilated mask the edit kept the background outside of).
Items whose ``0.png`` exists are skipped on a rerun; it is written last, atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from siso.compose import Subject
from siso.config import EditConfig
from siso.editing import edit_subject, prepare_scene
from siso.eval.generate import process_share, suite_device
from siso.eval.suites import EvalItem
from siso.images import load_subject
from siso.io import save_image, write_atomic, write_json
from siso.runs.models import Models
from siso.runs.run import objective
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
        folder.mkdir(parents=True, exist_ok=True)
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
            scene = prepare_scene(photo, mask, models.backbone(config).resolution, config.edit.mask_dilation)
        except MaskError as err:
            write_atomic(folder / SKIPPED, f"{err}\n")
            continue
        (folder / SKIPPED).unlink(missing_ok=True)
        subject = load_subject(item.subject_image)
        backbone = models.backbone(config)
        item_config = dataclasses.replace(config, train_prompt=item.prompt)
        # What `siso.runs.run` optimizes, in its order (editing suites take no generic negative and no IP-Adapter).
        loss_fn, _ = objective(models, item_config, [Subject(subject, item.class_name)])
        try:
            result = edit_subject(backbone, scene, subject, item_config, loss_fn=loss_fn, progress=False)
        finally:
            # The next item must start from the stock model (and add_lora refuses a module that has an adapter).
            backbone.pipe.unload_lora_weights()
        if not result.complete:
            raise KeyboardInterrupt  # save nothing half-edited: a rerun edits this item again
        write_json(folder / "metrics.json", {**result.record(), "mask": source})
        save_image(result.best_image, folder / "best.png")
        save_image(scene.mask_image, folder / "mask.png")
        (generated / item.id).mkdir(parents=True, exist_ok=True)
        save_image(result.best_image, generated / item.id / "0.png")
    skipped = {
        item.id: (out / "subjects" / item.id / SKIPPED).read_text().strip()
        for item in items
        if not (generated / item.id / "0.png").is_file() and (out / "subjects" / item.id / SKIPPED).is_file()
    }
    return generated, skipped
