"""The subjects of one image: each one's photo, class and box, and the names their loss terms go by."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from siso.compose.boxes import Box
from siso.config import MAX_SUBJECTS


@dataclass
class Subject:
    """One subject of a generation.

    Attributes:
        image: The subject photo (RGB), or several photos of the same subject (its loss averages over them).
        class_name: Its class (``dog``): what the layout detects, and its terms' name; ``None``: not known.
        box: Where it goes in a generated image (`Box`); ``None``: anywhere (one subject), or where the layout finds
            it (several).
        path: The photo's file (or the folder of its photos), for config.json.
        region: Editing: where it goes in the photo to edit, (H, W) bool in that photo's pixels.
        files: Every photo's file, for config.json (`siso.images.load_photos`); empty: just ``path``.
    """

    image: Image.Image | Sequence[Image.Image]
    class_name: str | None = None
    box: Box | None = None
    path: str | None = None
    region: np.ndarray | None = None
    files: Sequence[str] = ()

    def __post_init__(self):
        if self.class_name is not None and not self.class_name.strip():
            raise ValueError("a subject class must not be empty")
        if not self.photos:
            raise ValueError("a subject needs at least one photo")

    @property
    def photos(self) -> list[Image.Image]:
        """The subject's photos (one or more)."""
        return [self.image] if isinstance(self.image, Image.Image) else list(self.image)

    def record(self) -> dict:
        """What config.json keeps of the subject."""
        return {
            "photo": self.path,
            "photos": list(self.files) or [self.path],
            "class": self.class_name,
            "box": str(self.box) if self.box else None,
        }


def check_subjects(subjects: Sequence[Subject]) -> None:
    """Raise ValueError for no subject or more than `MAX_SUBJECTS`."""
    if not subjects:
        raise ValueError("at least one subject is needed")
    if len(subjects) > MAX_SUBJECTS:
        raise ValueError(f"{len(subjects)} subjects given; at most {MAX_SUBJECTS} compose one image")


def subject_names(classes: Sequence[str | None]) -> list[str]:
    """A name per subject for its loss terms and metrics: its class, numbered when classes repeat (``dog1``,
    ``dog2``), else ``subject<k>`` (1-based)."""
    normal = [None if c is None else "-".join(c.lower().split()) for c in classes]
    counts, seen = Counter(normal), Counter()
    names = []
    for k, name in enumerate(normal, 1):
        if name is None:
            names.append(f"subject{k}")
        else:
            seen[name] += 1
            names.append(f"{name}{seen[name]}" if counts[name] > 1 else name)
    return names
