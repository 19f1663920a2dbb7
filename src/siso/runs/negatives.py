"""The generic images of the ``generic`` negative (`siso.config.NegativeSettings`): what the frozen model draws for
"a photo of a {class}", which the learned subject should look less like than like its own photos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from siso.backbones import Backbone
from siso.compose import Subject, name_subjects
from siso.config import SisoConfig
from siso.hub import ModelLoadError
from siso.images import tensor_to_pil
from siso.io import save_image
from siso.vision.grounding import DEFAULT_DETECTOR, SubjectCropper


def draw_generic(backbone: Backbone, config: SisoConfig, class_name: str) -> list[Image.Image]:
    """``config.negatives.generic_images`` images of "a photo of a {class_name}" by ``backbone`` as it is (call it
    before the LoRA is added and without an IP-Adapter: the images must be the class's, not the subject's).

    They use the optimization's steps and guidance, from seeds ``seed + 1``, ``seed + 2``, ... (not the run's own
    seed, whose image is where the optimization starts).

    Returns:
        The images (RGB, the backbone's resolution).
    """
    opt = config.optim
    with torch.no_grad():
        cond = backbone.encode_prompt(f"a photo of a {class_name}", opt.guidance_scale)
        return [
            tensor_to_pil(
                backbone.sample(
                    cond,
                    torch.Generator().manual_seed((opt.seed + k) % 2**64),
                    opt.num_inference_steps,
                    opt.grad_steps,
                    opt.guidance_scale,
                )
            )[0]
            for k in range(1, config.negatives.generic_images + 1)
        ]


def generic_negatives(
    backbone: Backbone,
    config: SisoConfig,
    subjects: Sequence[Subject],
    classes: Sequence[str | None] | None = None,
    detector: str = DEFAULT_DETECTOR,
    drawn: dict[str, list[Image.Image]] | None = None,
) -> list[list[Image.Image]]:
    """Per subject, the generic images of its class (drawn once per class), when ``config.negatives.generic``.

    Args:
        classes: The subjects' classes where already known (a composition's); a subject without one is named by
            Grounding DINO in its photo (``detector``, loaded only then).
        drawn: Class -> its images, drawn by an earlier run with the same settings; the classes drawn here are added.

    Raises:
        MaskError: a subject's class could not be told (the message asks for ``--subject-class``).
        ModelLoadError: the detector is needed and cannot be loaded (the message offers ``--subject-class``).
    """
    classes = list(classes or [subject.class_name for subject in subjects])
    if None in classes:
        try:
            cropper = SubjectCropper(detector, backbone.device)
        except ModelLoadError as err:
            raise ModelLoadError(
                f"{err} The generic negative needs the subject's class: or name it with --subject-class NAME"
            ) from None
        named = name_subjects(subjects, cropper)
        classes = [given or found for given, found in zip(classes, named, strict=True)]
    drawn = {} if drawn is None else drawn
    for name in dict.fromkeys(classes):
        if name not in drawn:
            drawn[name] = draw_generic(backbone, config, name)
    return [drawn[name] for name in classes]


def save_generic(folder: str | Path, generic: Sequence[Sequence[Image.Image]], names: Sequence[str]) -> None:
    """Keep each subject's generic negatives in ``folder/negatives/<name>-<k>.png`` (a run folder, or an evaluation
    unit's), to look at.

    Args:
        names: Per subject, the name of its loss terms.
    """
    negatives = Path(folder) / "negatives"
    negatives.mkdir(parents=True, exist_ok=True)
    for name, images in zip(names, generic, strict=True):
        for k, image in enumerate(images, 1):
            save_image(image, negatives / f"{name}-{k}.png")
