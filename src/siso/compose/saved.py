"""Saved subjects composed into one image: reading them, loading their adapters side by side, and the composed subject
folder that keeps every adapter with its region.

A composed subject folder (what a composition run writes as its ``lora/``) holds one ordinary subject folder per
subject (``subject1/``, ``subject2/``, ...: `siso.lora.save_lora`'s, each loadable alone by a stock pipeline) and a
``siso_subject.json`` whose ``"composed"`` list gives each one's folder, name, class and box, beside the ``model``,
``resolution`` and the regions' ``edge``; `siso.compose.regional.RegionalSampler` redraws it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from siso.backbones import Backbone
from siso.compose.boxes import Box
from siso.io import atomic_folder, write_json
from siso.lora import SUBJECT_FILE, LoraError, check_lora_file, load_lora, read_subject_info, save_lora

PHOTOS = "photos"  # a saved subject's copies of its photos (the library keeps them; `SavedSubject.photos`)


@dataclass
class SavedSubject:
    """A saved subject to compose.

    Attributes:
        folder: Its subject folder (`siso.lora.save_lora`'s).
        name: What it is called (its library name, or its folder's name).
        box: Where it goes; ``None``: where the bare model draws its class.
        info: Its ``siso_subject.json``.
    """

    folder: Path
    name: str
    box: Box | None = None
    info: dict = field(default_factory=dict)

    @property
    def class_name(self) -> str | None:
        """Its class, where recorded (a composed folder records each subject's)."""
        return self.info.get("class")

    @property
    def photos(self) -> list[Path]:
        """The photos it was learned from that can still be read: its own ``photos/`` copies (a library subject's),
        else the files its record names that still exist."""
        kept = sorted(p for p in (self.folder / PHOTOS).glob("*") if p.is_file())
        if kept:
            return kept
        named = [Path(p) for p in self.info.get("photos", []) if p]
        return [p for p in named if p.is_file()]


def is_composed(folder: str | Path) -> bool:
    """Whether ``folder`` is a composed subject folder (its record lists ``"composed"`` subjects)."""
    return "composed" in read_subject_info(folder)


def read_saved(folder: str | Path, name: str | None = None, box: Box | None = None) -> list[SavedSubject]:
    """The subjects of a saved subject folder, checked without loading any model: the one subject of an ordinary
    folder (with ``box``), or every subject of a composed one, each with its recorded box.

    Raises:
        FileNotFoundError, LoraError: a weights file missing or damaged, a composed record that is damaged.
        ValueError: a box given for a composed folder (its boxes are recorded).
    """
    folder = Path(folder)
    info = read_subject_info(folder)
    if "composed" not in info:
        check_lora_file(folder)
        return [SavedSubject(folder, name or folder.name, box, info)]
    if box is not None:
        raise ValueError(f"{folder} is a composition: its subjects' boxes are recorded; give it no --box")
    subjects = []
    try:
        for entry in info["composed"]:
            sub = folder / entry["folder"]
            check_lora_file(sub)
            subjects.append(SavedSubject(sub, entry["name"], Box.parse(entry["box"]), read_subject_info(sub)))
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, LoraError):
            raise
        raise LoraError(f"{folder / SUBJECT_FILE}: its composed record is damaged ({err}); compose it again") from None
    return subjects


def check_composable(subjects: Sequence[SavedSubject]) -> int | None:
    """Refuse subjects that cannot share one image, before any model loads; returns the resolution they were learned
    at (``None``: not recorded).

    Raises:
        ValueError: a subject learned over an IP-Adapter (one adapter conditions the whole image), subjects learned
            at different resolutions, or some with a box and some without.
    """
    for subject in subjects:
        if "ip_adapter" in subject.info:
            raise ValueError(
                f"{subject.name} was learned over an IP-Adapter, which conditions the whole image: it is drawn alone "
                "(one --lora, no --box)"
            )
    sizes = {s.info.get("resolution") for s in subjects} - {None}
    if len(sizes) > 1:
        raise ValueError(
            f"the subjects were learned at different resolutions ({', '.join(map(str, sorted(sizes)))} px)"
        )
    if len({s.box is None for s in subjects}) > 1:
        raise ValueError("give every --lora a --box, or none (then each goes where the bare model draws its class)")
    return sizes.pop() if sizes else None


def adapter_names(count: int) -> list[str]:
    """The adapters' names on the backbone: ``subject1``, ``subject2``, ... (peft keys, whatever the subjects'
    names)."""
    return [f"subject{k}" for k in range(1, count + 1)]


def load_saved(backbone: Backbone, subjects: Sequence[SavedSubject]) -> list[str]:
    """Load every subject's LoRA onto ``backbone`` as its own adapter (`adapter_names`); returns their names.

    Raises:
        LoraError: a subject's weights do not fit the backbone.
    """
    adapters = adapter_names(len(subjects))
    for subject, adapter in zip(subjects, adapters, strict=True):
        load_lora(backbone, subject.folder, adapter)
    return adapters


def save_composed(
    backbone: Backbone,
    directory: str | Path,
    subjects: Sequence[SavedSubject],
    adapters: Sequence[str],
    edge: float,
    **info,
) -> Path:
    """Write the composed subject folder: every adapter as it is on ``backbone`` now (polished or as loaded) in its
    own subject folder, with the subject's photos, and the record of names, classes and boxes. The folder appears
    whole or not at all.

    Args:
        backbone: Carries ``adapters``.
        directory: The folder to write.
        subjects: The subjects, each with its box.
        adapters: Each subject's adapter on ``backbone``.
        edge: The regions' soft edge in pixels (`siso.compose.regional.EDGE`).
        info: More facts for the record (model, prompt, polish iterations, ...).
    """
    record = []
    with atomic_folder(directory) as partial:
        for subject, adapter in zip(subjects, adapters, strict=True):
            kept = {k: v for k, v in subject.info.items() if k not in ("composed", "resolution")}
            save_lora(backbone, partial / adapter, adapter, **kept)
            photos = subject.photos
            if photos:
                (partial / adapter / PHOTOS).mkdir()
                for k, photo in enumerate(photos):
                    shutil.copyfile(photo, partial / adapter / PHOTOS / f"{k:02d}{photo.suffix.lower()}")
            record.append(
                {"folder": adapter, "name": subject.name, "class": subject.class_name, "box": str(subject.box)}
            )
        write_json(
            partial / SUBJECT_FILE, {"resolution": backbone.resolution, "edge": edge, **info, "composed": record}
        )
    return Path(directory)
