"""Several subjects in one image, each where the user puts it (or one subject in a box): the subjects and their boxes
(`siso.compose.subjects`, `siso.compose.boxes`) and the layout found in the frozen model's first image when no box is
given (`siso.compose.layout`). Their loss is `siso.losses.CompositionLoss`."""

from siso.compose.boxes import Box, BoxError, PixelBox, default_slots, iou
from siso.compose.layout import Placement, first_image, name_subjects, place_subjects, plan_layout
from siso.compose.subjects import Subject, check_subjects, subject_names

__all__ = [
    "Box",
    "BoxError",
    "PixelBox",
    "Placement",
    "Subject",
    "check_subjects",
    "default_slots",
    "first_image",
    "iou",
    "name_subjects",
    "place_subjects",
    "plan_layout",
    "subject_names",
]
