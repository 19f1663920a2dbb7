"""The Refine tab's request: the image to refine, where the subject is in it, the subject's photos and the refine's
settings, checked and described as a ``refine`` `siso.runs.spec.RunSpec` (its folder is given when it runs,
`siso.app.studio.Studio.refine`). The app refines one subject."""

from __future__ import annotations

import numpy as np
from PIL import Image

from siso.app.settings import AppSettings
from siso.app.uploads import Photos, UploadError, run_config, scene_photo, upload_subject
from siso.backbones import check_can_edit
from siso.config import OptimSettings, RefineConfig
from siso.runs.jobs import REGION_OPTIONS, RefineJob
from siso.runs.spec import RunSpec
from siso.vision.grounding import DEFAULT_DETECTOR
from siso.vision.masks import MaskError, box_mask
from siso.vision.segmenter import DEFAULT_SEGMENTER

# The ways to give the subject's region on the page (the CLI's `REGION_OPTIONS`, as the page names them).
PAGE_REGION_OPTIONS = 'paint over the subject, give a box around it (x0,y0,x1,y1), or tick "Whole image"'


def subject_region(
    photo: Image.Image, painted: np.ndarray, box: str, subject_class: str, whole: bool
) -> tuple[np.ndarray | None, str | None]:
    """The subject's region in the image to refine and how it was given: what was painted, else the box; ``(None,
    None)`` for the whole image (``whole``) or, with neither, for its class to be found in the image.

    Raises:
        UploadError: the whole image with paint or a box too, a bad box, or no region and no class to find.
    """
    if whole:
        if painted.any() or box.strip():
            raise UploadError('"Whole image" refines all of it: clear the paint and the box, or untick it')
        return None, None
    if painted.any():
        return painted, "painted in the app"
    if box.strip():
        try:
            return box_mask(box.strip(), photo.size), f"box {box.strip()}"
        except MaskError as err:
            raise UploadError(str(err)) from None
    if subject_class.strip():
        return None, None
    raise UploadError(f"mark the subject in the image: {PAGE_REGION_OPTIONS}, or type its class to find it")


def refine_spec(
    settings: AppSettings,
    image: dict | None,
    box: str,
    subject_path: Photos,
    subject_class: str = "",
    whole: bool = False,
    prompt: str = "",
    strength: float | None = None,
    structure_weight: float | None = None,
    composite: bool = False,
    max_iters: int = OptimSettings.max_iters,
    lr: float | None = None,
    seed: int = 0,
) -> RunSpec:
    """The refine the Refine tab asks for, with no run folder yet.

    Args:
        settings: The app's settings (its ``check_model``, ``detector`` and ``segmenter`` too).
        image: The image to refine and what was painted on it, as Gradio's image editor gives them (``background``:
            the image, ``layers``: RGBA paint; painted pixels are the subject's region), in numpy arrays.
        box: Instead of paint: ``x0,y0,x1,y1`` around the subject, in the image's pixels.
        subject_path: The subject's photo file, or several photos of the same subject.
        subject_class: Its class: the prompt's ("a photo of a {class}"), and, with no paint, box or ``whole``, what is
            found in the image (Grounding DINO + SAM). Empty: named from its photo by Grounding DINO where needed.
        whole: The region is the whole image (`siso refine --region all`).
        prompt: The image's prompt; empty: from the class.
        strength, structure_weight, composite: The refine's settings (`siso.config.EditSettings`,
            `siso.config.RefineSettings`); ``None``: the model's default.
        max_iters, lr, seed: The page's "Advanced" settings.

    Raises:
        UploadError: no image, no subject photo, no region and no class, a bad box or value, or a model that cannot
            edit.
    """
    try:
        check_can_edit(settings.model)
    except ValueError as err:
        raise UploadError(str(err)) from None
    photo, painted = scene_photo(image, settings, "image to refine")
    subject = upload_subject(subject_path, settings, "subject photo", subject_class)
    subject.region, source = subject_region(photo, painted, box or "", subject_class, whole)
    prompt = prompt.strip() or None
    config = run_config(
        settings,
        RefineConfig,
        prompt,
        max_iters,
        lr,
        seed,
        edit={"strength": strength, "composite": composite},
        refine={"structure_weight": structure_weight, "check_model": settings.check_model},
    )
    detector = settings.detector or DEFAULT_DETECTOR
    segmenter = settings.segmenter or DEFAULT_SEGMENTER
    job = RefineJob(photo, whole=whole, sources=[source], prompt=prompt, detector=detector, segmenter=segmenter)
    # The image comes from the page, not a file: the run folder keeps it as input.png.
    return RunSpec("refine", config, None, [subject], job, paths={"image": "input.png"}, detector=detector)


def page_message(err: MaskError) -> UploadError:
    """A region the run could not find (the subject's class not found in the image), told in the page's terms."""
    return UploadError(str(err).replace(REGION_OPTIONS, PAGE_REGION_OPTIONS))
