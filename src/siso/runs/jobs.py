"""What a run is asked to make: the final images of a generation (`GenerationJob`), and the photo, mask and names of an
edit (`EditJob`, resolved by `resolve_edit`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from siso.compose import Subject, name_subjects
from siso.config import check_seed
from siso.devices import default_device
from siso.hub import ModelLoadError
from siso.vision.grounding import SubjectCropper
from siso.vision.masks import MaskError
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, ObjectSegmenter


@dataclass
class GenerationJob:
    """Final images to make: every prompt x seed, with ``num_inference_steps`` steps."""

    prompts: list[str]
    seeds: list[int]
    num_inference_steps: int = 1
    guidance_scale: float = 0.0

    def __post_init__(self):
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ValueError("at least one non-empty prompt is needed")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        for seed in self.seeds:
            check_seed(seed, "every seed")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")


@dataclass
class EditJob:
    """What to edit: the scene photo, and where the object mask comes from.

    Attributes:
        scene: The photo to edit (RGB).
        mask: The object mask in the scene's pixels (from ``--mask`` or ``--box``), or None to detect ``object_name``
            with Grounding DINO and segment it with SAM.
        mask_source: How ``mask`` was made, for config.json (``file PATH``, ``box x0,y0,x1,y1``, ``detected``).
        object_name: The object to detect (default: the subject class).
        subject_class: The subject's class, for the default prompt "a photo of a {class}" (inferred from the subject
            photo when None and the prompt is not given).
        prompt: The edit prompt (default "a photo of a {subject class}").
        detector, segmenter: Grounding DINO and SAM models for detection and class inference.
        box_threshold: Minimum detection score (the paper's 0.3).
    """

    scene: Image.Image
    mask: np.ndarray | None = None
    mask_source: str = "detected"
    object_name: str | None = None
    subject_class: str | None = None
    prompt: str | None = None
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    box_threshold: float = 0.3

    def __post_init__(self):
        for name in ("object_name", "subject_class", "prompt"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name.replace('_name', '').replace('_', ' ')} must not be empty")


def resolve_edit(job: EditJob, subject: Image.Image, device: str | None) -> tuple[np.ndarray, str, dict]:
    """The object mask, the edit prompt and the names used, detecting and naming objects where the job says to.

    Raises:
        MaskError: nothing detected, or the subject's class could not be inferred.
        ModelLoadError: a detection model cannot be loaded (with a mask given, the message also offers
            ``--subject-class``, which needs none).
    """
    names = {"object": job.object_name, "subject_class": job.subject_class}
    need_class = job.subject_class is None and (job.prompt is None or (job.mask is None and job.object_name is None))
    mask = job.mask
    if mask is not None and not need_class:
        return mask, job.prompt or f"a photo of a {job.subject_class}", names
    device = device or default_device()
    if mask is not None:  # only the subject's class to find: the detector alone, without SAM
        try:
            detector = SubjectCropper(job.detector, device, job.box_threshold)
        except ModelLoadError as err:
            raise ModelLoadError(
                f"{err} Or name the subject with --subject-class NAME (e.g. dog): no detector then"
            ) from None
    else:
        segmenter = ObjectSegmenter(job.detector, job.segmenter, device, job.box_threshold)
        detector = segmenter.detector
    if need_class:
        names["subject_class"] = detector.name_object(subject)
        if names["subject_class"] is None:
            raise MaskError(
                "could not tell what the subject is; pass --subject-class NAME (e.g. dog), and --object NAME for "
                "the object to replace if it differs"
            )
    if mask is None:
        names["object"] = job.object_name or names["subject_class"]
        mask = segmenter.segment(job.scene, names["object"])
        if mask is None or not mask.any():
            raise MaskError(
                f"no {names['object']!r} was detected in the photo to edit; name it with --object NAME, or give "
                "--box x0,y0,x1,y1 or --mask PNG"
            )
    return mask, job.prompt or f"a photo of a {names['subject_class']}", names


def resolve_edit_subjects(
    job: EditJob, subjects: Sequence[Subject], device: str | None
) -> tuple[np.ndarray, str, list]:
    """For several subjects, each with its region: the union of the regions (the part of the photo redone), the edit
    prompt (given, or "a photo of a {class 1} and a {class 2}") and each subject's class (given, or named by Grounding
    DINO in its photo, which then loads).

    Raises:
        MaskError: a subject without a region, a region of another size than the photo, or a class that could not be
            told.
        ModelLoadError: the detector is needed and cannot be loaded.
    """
    for k, subject in enumerate(subjects, 1):
        if subject.region is None:
            raise MaskError(f"subject {k} has no region: give --box or --mask after its --subject")
        if subject.region.shape != (job.scene.height, job.scene.width):
            raise MaskError(f"the region of subject {k} is not the size of the photo to edit")
    classes = [subject.class_name for subject in subjects]
    if job.prompt is None and None in classes:
        classes = name_subjects(subjects, SubjectCropper(job.detector, device or default_device(), job.box_threshold))
    union = np.logical_or.reduce([subject.region for subject in subjects])
    return union, job.prompt or "a photo of a " + " and a ".join(classes), classes


@dataclass
class RefineJob:
    """What to refine: the image, where each subject is in it, the prompt.

    Each subject's region is its ``region`` (from ``--box`` or ``--mask``, in the image's pixels), or, without one,
    its class detected in the image with Grounding DINO and segmented with SAM, or the whole image (``whole``).

    Attributes:
        image: The image to refine (RGB); ``None``: drawn by the run first (`siso.config.RefineSettings.start`).
        whole: The region is the whole image (``--region all``; one subject).
        sources: Per subject, how its given region was made, for config.json (``box x0,y0,x1,y1``, ``file PATH``);
            ``None`` for one to detect.
        prompt: The prompt (default "a photo of a {subject class}").
        detector, segmenter: Grounding DINO and SAM, for detection and for naming a subject's class.
        box_threshold: Minimum detection score (the paper's 0.3).
    """

    image: Image.Image | None = None
    whole: bool = False
    sources: Sequence[str | None] = ()
    prompt: str | None = None
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    box_threshold: float = 0.3

    def __post_init__(self):
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt must not be empty")


# What a user can give instead of a region siso could not find.
REGION_OPTIONS = "give --box x0,y0,x1,y1, --mask PNG or --region all"


def refine_prompt(job: RefineJob, subjects: Sequence[Subject], device: str | None) -> tuple[str, list[str | None]]:
    """The refine's prompt (given, or "a photo of a {class 1} and a {class 2}") and each subject's class: given, or,
    where the prompt or a detection needs it, named by Grounding DINO in the subject's photo.

    Raises:
        MaskError: a class that could not be told.
        ModelLoadError: the detector is needed and cannot be loaded.
    """
    classes = [subject.class_name for subject in subjects]
    detect = not job.whole and any(subject.region is None for subject in subjects)
    if None in classes and (job.prompt is None or detect):
        classes = name_subjects(subjects, SubjectCropper(job.detector, device or default_device(), job.box_threshold))
    return job.prompt or "a photo of a " + " and a ".join(classes), classes


def refine_regions(
    job: RefineJob,
    image: Image.Image,
    subjects: Sequence[Subject],
    classes: Sequence[str | None],
    device: str | None,
    segmenter: Callable[[], ObjectSegmenter] | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Each subject's region in ``image`` ((H, W) bool) and how it was made (``all``, the given source, or
    ``detected <class>``): the whole image, the subject's own region, or its class detected and segmented.

    ``segmenter`` gives the job's Grounding DINO + SAM when a class is to be found (`siso.runs.models.Models`
    keeps them for the runs that follow); ``None``: loaded here.

    Raises:
        MaskError: ``whole`` with several subjects, a region of another size than the image or empty, a class not
            found in the image (the message names `REGION_OPTIONS`), or two subjects found on the same object.
        ModelLoadError: the detector or SAM is needed and cannot be loaded.
    """
    size = (image.height, image.width)
    if job.whole:
        if len(subjects) > 1:
            raise MaskError("--region all refines one subject; give each of several subjects its --box or --mask")
        return [np.ones(size, dtype=bool)], ["all"]
    sources = list(job.sources) or [None] * len(subjects)
    load = segmenter or (
        lambda: ObjectSegmenter(job.detector, job.segmenter, device or default_device(), job.box_threshold)
    )
    found = None
    regions = []
    for k, (subject, name) in enumerate(zip(subjects, classes, strict=True), 1):
        region = subject.region
        if region is None:
            found = found or load()
            region = found.segment(image, name)
            if region is None or not region.any():
                raise MaskError(f"no {name!r} was found in the image to refine: {REGION_OPTIONS}")
            if any((region == other).all() for other in regions):
                raise MaskError(f"subject {k} was found on the same {name!r} as another: {REGION_OPTIONS} for each")
            sources[k - 1] = f"detected {name}"
        elif region.shape != size:
            raise MaskError(f"the region of subject {k} is not the size of the image to refine")
        elif not region.any():
            raise MaskError(f"the region of subject {k} is empty: {REGION_OPTIONS}")
        regions.append(region)
    return regions, sources
