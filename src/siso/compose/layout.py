"""Where each subject goes when the user gave no box: found in the frozen model's first image by its class.

The frozen model (LoRA at identity) draws the image the optimization starts from; Grounding DINO looks for each
subject's class in it (as editing and evaluation do), and each subject takes the best box of its class not taken by an
earlier subject. A class not found there gets its default slot (`siso.compose.boxes.default_slots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from siso.backbones import Backbone
from siso.compose.boxes import Box, default_slots, iou
from siso.compose.subjects import Subject
from siso.config import SisoConfig
from siso.images import tensor_to_pil
from siso.optimize import generation_render
from siso.vision.grounding import DEFAULT_DETECTOR, SubjectCropper
from siso.vision.masks import MaskError

# A detected box overlapping an earlier subject's this much (IoU) is taken to be that subject again.
SAME_OBJECT_IOU = 0.5


@dataclass
class Placement:
    """Where a subject goes and how that was decided.

    Attributes:
        box: The box.
        source: ``given``, ``detected`` (in the first image) or ``default slot``.
    """

    box: Box
    source: str


def name_subjects(subjects: Sequence[Subject], detector: SubjectCropper) -> list[str]:
    """Each subject's class: the one given, or the object Grounding DINO names in its photo.

    Raises:
        MaskError: a subject's class could not be told.
    """
    classes = []
    for k, subject in enumerate(subjects, 1):
        name = subject.class_name or detector.name_object(subject.photos[0])
        if name is None:
            raise MaskError(f"could not tell what subject {k} is; pass --subject-class NAME (e.g. dog) after its photo")
        classes.append(name)
    return classes


def plan_layout(
    boxes: Sequence[Box | None], classes: Sequence[str], image: Image.Image, detector: SubjectCropper | None
) -> tuple[list[Placement], list[str]]:
    """A box for every subject: its own, else the best box of its class in ``image`` that no earlier subject took,
    else its default slot.

    Args:
        boxes: Each subject's box where given (those keep it), else ``None``.
        classes: Each subject's class.
        image: The frozen model's first image.
        detector: Grounding DINO; ``None`` only when every subject has a box.

    Returns:
        The placements, and one line per subject put in its default slot.
    """
    width, height = image.size
    slots = default_slots(len(boxes))
    taken = [box.pixels(width, height) for box in boxes if box is not None]
    placements, notes = [], []
    for k, (given, name) in enumerate(zip(boxes, classes, strict=True)):
        if given is not None:
            placements.append(Placement(given, "given"))
            continue
        found = [
            box
            for box, _ in detector.detect_all(image, name)
            if box[2] > box[0] and box[3] > box[1] and all(iou(box, t) < SAME_OBJECT_IOU for t in taken)
        ]
        if found:
            x0, y0, x1, y1 = found[0]
            taken.append(tuple(found[0]))
            placements.append(Placement(Box(x0 / width, y0 / height, x1 / width, y1 / height), "detected"))
        else:
            placements.append(Placement(slots[k], "default slot"))
            notes.append(f"no {name} found in the first image: subject {k + 1} goes in the default slot {slots[k]}")
    return placements, notes


def first_image(backbone: Backbone, config: SisoConfig) -> Image.Image:
    """The frozen model's image for ``config`` (its train prompt, seed and steps): the image the optimization starts
    from."""
    with torch.no_grad():
        cond = backbone.encode_prompt(config.train_prompt, config.optim.guidance_scale)
        return tensor_to_pil(generation_render(backbone, config)(cond))[0]


def place_subjects(
    backbone: Backbone,
    subjects: Sequence[Subject],
    config: SisoConfig,
    detector: str = DEFAULT_DETECTOR,
    box_threshold: float = 0.3,
) -> tuple[list[Placement | None], list[str | None], list[str]]:
    """Each subject's placement and class: its own box where given; for several subjects without one, the layout of
    the frozen model's first image (`plan_layout`), with Grounding DINO (``detector``) loaded only then.

    Returns:
        Per subject its placement (``None``: a single subject anywhere) and class (``None`` where not given and not
        needed), and one line per subject put in a default slot.

    Raises:
        BoxError: a given box reaches outside the backbone's image.
        MaskError: a class to find could not be told from the subject's photo.
        siso.hub.ModelLoadError: the detector cannot be loaded.
    """
    side = backbone.resolution
    for subject in subjects:
        if subject.box is not None:
            subject.box.pixels(side, side)  # a box outside the image is refused before the slow work
    classes = [subject.class_name for subject in subjects]
    if len(subjects) == 1 or all(subject.box is not None for subject in subjects):
        return [Placement(s.box, "given") if s.box is not None else None for s in subjects], classes, []
    cropper = SubjectCropper(detector, backbone.device, box_threshold)
    classes = name_subjects(subjects, cropper)
    placements, notes = plan_layout([s.box for s in subjects], classes, first_image(backbone, config), cropper)
    return placements, classes, notes
