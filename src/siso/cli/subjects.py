"""Per-subject options: ``--subject PHOTO`` (or, for ``generate``, a saved subject ``--lora NAME|DIR``) starts a
subject, and its class, box or region (``--subject-class``, ``--box``, ``--mask``) follow it. Options given before the
first subject belong to the first."""

from __future__ import annotations

import argparse

import numpy as np

from siso.compose import Subject
from siso.config import MAX_SUBJECTS
from siso.images import load_photos
from siso.vision.masks import box_mask, load_mask

# Option dest -> the key of a subject's spec.
SUBJECT_KEYS = {"subject": "photo", "lora": "lora", "subject_class": "class", "box": "box", "mask": "mask"}
STARTS = ("photo", "lora")  # the keys that start a subject


class SubjectOption(argparse.Action):
    """Records (key, value) in command-line order under ``subject_options``; `subject_specs` groups them. A saved
    subject's values are also kept in order under ``lora`` (``None``: none given)."""

    def __call__(self, parser, namespace, values, option_string=None):
        recorded = list(getattr(namespace, "subject_options", None) or [])  # a copy: never the shared default
        recorded.append((SUBJECT_KEYS[self.dest], option_string, values))
        namespace.subject_options = recorded
        if self.dest == "lora":
            namespace.lora = [*(namespace.lora or []), values]


def add_subject_option(parser: argparse.ArgumentParser, *flags: str, **kwargs) -> None:
    """An option of the subject before it (``dest`` one of `SUBJECT_KEYS`)."""
    parser.add_argument(*flags, action=SubjectOption, **kwargs)
    parser.set_defaults(subject_options=[])


def subject_specs(args: argparse.Namespace) -> list[dict]:
    """The subjects of the command line: one dict per ``--subject`` (or ``--lora``) with ``photo`` (or ``lora``) and any
    of ``class``, ``box``, ``mask`` (strings as given).

    Raises:
        ValueError: an option given twice for one subject (more boxes or classes than subjects), options but no
            ``--subject``, or more than `MAX_SUBJECTS` subjects.
    """
    specs: list[dict] = []
    before: list[tuple[str, str, str]] = []
    for key, flag, value in args.subject_options:
        if key in STARTS:
            specs.append({})
        target = specs[-1] if specs else None
        if target is None:
            before.append((key, flag, value))
            continue
        if key in STARTS and len(specs) == 1:
            specs[0].update({k: v for k, _, v in before})  # --box B --subject S: the box is S's
        if key in target:
            raise ValueError(
                f"{flag} given twice for subject {len(specs)}: each {flag} belongs to the --subject before it, so "
                f"there are more of them than subjects"
            )
        target[key] = value
    if before and not specs:
        raise ValueError(f"{before[0][1]} belongs to a subject: give --subject PHOTO")
    if len(specs) > MAX_SUBJECTS:
        raise ValueError(f"{len(specs)} subjects given; at most {MAX_SUBJECTS} compose one image")
    return specs


def checked_specs(args: argparse.Namespace) -> list[dict]:
    """`subject_specs`, refused before anything loads when there is no subject, a subject has both a box and a mask,
    or an empty class.

    Raises:
        ValueError: naming the options.
    """
    specs = subject_specs(args)
    if not specs:
        raise ValueError("give the subject: --subject PHOTO")
    for k, spec in enumerate(specs, 1):
        if "box" in spec and "mask" in spec:
            raise ValueError(f"subject {k} has both --box and --mask: give one region per subject")
        if "class" in spec and not spec["class"].strip():
            raise ValueError("subject class must not be empty")
    return specs


def load_subject_spec(spec: dict, **fields) -> Subject:
    """The subject of one `subject_specs` entry: its photo, or every photo of its folder (`siso.images.load_photos`),
    and its class; ``fields`` are the rest of the `siso.compose.Subject` (its box or region).

    Raises:
        ImageError: a photo cannot be used, or the folder holds none.
    """
    photos, files = load_photos(spec["photo"])
    return Subject(photos, spec.get("class"), path=str(spec["photo"]), files=files, **fields)


def given_region(spec: dict, size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """A subject's region in the image it goes into (from its --mask or --box) and how it was given (``file PATH``,
    ``box x0,y0,x1,y1``); ``(None, None)`` when neither was given.

    Args:
        spec: A `subject_specs` entry.
        size: (width, height) of the image.

    Raises:
        MaskError: a box that is malformed or reaches outside the image, a mask file that cannot be used.
    """
    if "mask" in spec:
        return load_mask(spec["mask"], size), f"file {spec['mask']}"
    if "box" in spec:
        return box_mask(spec["box"], size), f"box {spec['box']}"
    return None, None
