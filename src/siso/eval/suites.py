"""Benchmark suites (DreamBench, ImagenHub subject-driven generation): the items to generate and score, read from a
local folder.

An item is one (subject, prompt) pair. Generated images of any method are laid out by item::

    GENERATED/<item id>/<k>.png        e.g. GENERATED/backpack/00/0.png, .../backpack/00/1.png

DreamBench (Ruiz et al. 2023, the ``google/dreambooth`` repository layout)::

    DATA/dataset/<subject>/*.jpg
    DATA/dataset/prompts_and_classes.txt      (``DATA`` may also be the ``dataset`` folder itself)

30 subjects x 25 prompts = 750 items; item id ``<subject>/<prompt index, 2 digits>``. Prompts are written without
the unique token by default (``a dog in the jungle``): SISO needs none; pass ``unique_token`` for methods that do.

DreamBench-multi (`siso.eval.multi`) reads the same folder: 12 subject pairs x 5 prompts naming both = 60 items, id
``<subject A>+<subject B>/<prompt index>``, each subject in a fixed box.

DreamBench-refine (`siso.eval.refine`) has DreamBench's items: each item's images, made by another method and laid out
as above, are refined with siso and scored before and after.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from siso.eval.multi import PAIRS, MultiItem, pair_items

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LIVE_CLASSES = ("cat", "dog")  # DreamBench's 9 live subjects get the "Live Subject Prompts"


class SuiteError(ValueError):
    """A suite or generated folder that does not have the expected layout; the message names what is wrong."""


@dataclass(frozen=True)
class EvalItem:
    """One (subject, prompt) pair of a suite.

    Attributes:
        id: Stable id, also the item's folder under the generated root (``<subject>/<prompt index>``).
        subject: Subject name.
        class_name: The subject's class (e.g. ``dog``), used for prompts and for cropping with a detector.
        prompt: The prompt to generate.
        subject_image: The one photo a single-image method is given (the subject's first image, sorted by name).
        references: All real photos of the subject (identity metrics compare against each).
        input_image: Editing suites: the photo whose subject is replaced (background metrics compare against it).
        mask: Editing suites: optional mask of the input's subject (white = subject); detected when absent.
    """

    id: str
    subject: str
    class_name: str
    prompt: str
    subject_image: Path
    references: tuple[Path, ...] = field(default_factory=tuple)
    input_image: Path | None = None
    mask: Path | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_dreambench(data: str | Path) -> tuple[Path, dict[str, str], dict[str, list[str]]]:
    """The ``dataset`` folder of a DreamBench copy, its subject -> class table and its prompt templates by kind.

    Raises:
        SuiteError: the folder is missing, has no ``prompts_and_classes.txt``, or the file cannot be parsed.
    """
    root = Path(data)
    dataset = root / "dataset" if (root / "dataset").is_dir() else root
    spec = dataset / "prompts_and_classes.txt"
    if not spec.is_file():
        raise SuiteError(
            f"{root} is not a DreamBench folder: expected dataset/prompts_and_classes.txt and dataset/<subject>/*.jpg "
            "(git clone https://github.com/google/dreambooth)"
        )
    text = spec.read_text()
    table = re.findall(r"^([A-Za-z0-9_]+),([^,\n]+)$", text.split("Prompts")[0], flags=re.M)
    classes = {subject: class_name.strip() for subject, class_name in table if subject != "subject_name"}
    sections = re.split(r"^(Object Prompts|Live Subject Prompts)\s*$", text, flags=re.M)
    templates = {
        name: re.findall(r"^'(.*)'\.format\(unique_token, class_token\)", body, flags=re.M)
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }
    if not classes or set(templates) != {"Object Prompts", "Live Subject Prompts"} or not all(templates.values()):
        raise SuiteError(f"cannot parse {spec}: expected a 'Classes' table and 'Object'/'Live Subject Prompts' lists")
    return dataset, classes, templates


def _dreambench_photos(dataset: Path, subject: str) -> list[Path]:
    folder = dataset / subject
    if not folder.is_dir() or not (photos := _images_in(folder)):
        raise SuiteError(f"DreamBench subject {subject!r} has no images in {folder}")
    return photos


def load_dreambench(data: str | Path, unique_token: str = "") -> list[EvalItem]:
    """Read DreamBench from a local copy of the ``google/dreambooth`` repository (or its ``dataset`` folder).

    Raises:
        SuiteError: the folder is missing, has no ``prompts_and_classes.txt``, the file cannot be parsed, or a
            listed subject has no folder or no images.
    """
    dataset, classes, templates = _read_dreambench(data)
    items = []
    for subject, class_name in classes.items():
        photos = _dreambench_photos(dataset, subject)
        kind = "Live Subject Prompts" if class_name in LIVE_CLASSES else "Object Prompts"
        for index, template in enumerate(templates[kind]):
            prompt = " ".join(template.format(unique_token, class_name).split())
            items.append(EvalItem(f"{subject}/{index:02d}", subject, class_name, prompt, photos[0], tuple(photos)))
    return items


def load_dreambench_multi(data: str | Path, unique_token: str = "") -> list[MultiItem]:
    """The ``dreambench-multi`` suite (`siso.eval.multi`): DreamBench subject pairs in one image, each subject in a
    fixed box, from the same local DreamBench copy as `load_dreambench`.

    Raises:
        SuiteError: as `load_dreambench`'s, or a subject of `siso.eval.multi.PAIRS` is not in the class table.
    """
    dataset, classes, _ = _read_dreambench(data)
    names = sorted({name for pair in PAIRS for name in pair[:2]})
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise SuiteError(f"DreamBench's class table lacks the dreambench-multi subject(s) {', '.join(unknown)}")
    return pair_items(classes, {name: _dreambench_photos(dataset, name) for name in names}, unique_token)


IMAGENHUB_ROWS = "imagenhub_generation.jsonl"


def _imagenhub_rows(root: Path, rows_file: str, suite: str, expected: str) -> list[dict]:
    """The JSONL rows of an ImagenHub export, or a SuiteError saying how to make the export."""
    if not (root / rows_file).is_file():
        raise SuiteError(
            f"{root} is not an {suite} export: expected {rows_file} and {expected} "
            f"(make one with `siso eval fetch --suite {suite} --out DIR`)"
        )
    return [json.loads(line) for line in (root / rows_file).read_text().splitlines()]


def _imagenhub_subject(root: Path, subject: str) -> tuple[str, list[Path]]:
    """(class name, photos) of an ImagenHub subject; the class is the name without digits and underscores
    (``dog2`` -> ``dog``), as ImagenHub derives it."""
    folder = root / "concepts" / subject
    if not folder.is_dir() or not (photos := _images_in(folder)):
        raise SuiteError(f"ImagenHub subject {subject!r} has no photos in {folder}")
    return "".join(c for c in subject.replace("_", " ") if not c.isdigit()).strip(), photos


def load_imagenhub_generation(data: str | Path, unique_token: str = "") -> list[EvalItem]:
    """Read ImagenHub's subject-driven generation benchmark (150 prompts: 30 subjects x 5) from a local export.

    Layout (what `export_imagenhub_generation` writes)::

        DATA/imagenhub_generation.jsonl      {"uid": ..., "subject": ..., "prompt": "... <token> ..."} per line
        DATA/concepts/<subject>/*.jpg        the subject photos (ImagenHub/DreamBooth_Concepts)

    Item id: ``<subject>/<uid>``; the class comes from the subject's name (``dog2`` -> ``dog``).

    Raises:
        SuiteError: the export is missing or a row's subject has no photos.
    """
    root = Path(data)
    items = []
    for row in _imagenhub_rows(root, IMAGENHUB_ROWS, "imagenhub-generation", "concepts/<subject>/"):
        subject = row["subject"]
        class_name, photos = _imagenhub_subject(root, subject)
        prompt = " ".join(row["prompt"].replace("<token>", unique_token).split())
        items.append(EvalItem(f"{subject}/{row['uid']}", subject, class_name, prompt, photos[0], tuple(photos)))
    return items


def export_imagenhub_generation(eval_rows, concept_rows, out: str | Path) -> Path:
    """Write the local export `load_imagenhub_generation` reads.

    Args:
        eval_rows: Rows of ``ImagenHub/Subject_Driven_Image_Generation`` (split ``eval``): dicts with ``uid``,
            ``subject``, ``prompt``.
        concept_rows: Rows of ``ImagenHub/DreamBooth_Concepts`` (split ``train``): dicts with ``subject`` and
            ``image`` (a PIL image).
        out: Folder to write.
    """
    out = Path(out)
    _export_concepts(concept_rows, out)
    lines = [json.dumps({k: row[k] for k in ("uid", "subject", "prompt")}) for row in eval_rows]
    (out / IMAGENHUB_ROWS).write_text("\n".join(lines) + "\n")
    return out


IMAGENHUB_EDIT_ROWS = "imagenhub_editing.jsonl"


def load_imagenhub_editing(data: str | Path, unique_token: str = "") -> list[EvalItem]:
    """Read ImagenHub's subject-driven editing benchmark (154 samples: 22 subjects x 7 photos) from a local export.

    Layout (what `export_imagenhub_editing` writes)::

        DATA/imagenhub_editing.jsonl      {"uid": ..., "subject": ...} per line
        DATA/inputs/<uid>.jpg             the photo to edit
        DATA/masks/<uid>.png              optional subject mask of the input (white = subject); else detected
        DATA/concepts/<subject>/*.jpg     the subject photos

    Item id ``<subject>/<uid>``; prompt ``a photo of a <class>`` (ImagenHub's target prompt without its token).

    Raises:
        SuiteError: the export is missing, or an input or the subject's photos are missing.
    """
    root = Path(data)
    items = []
    for row in _imagenhub_rows(root, IMAGENHUB_EDIT_ROWS, "imagenhub-editing", "inputs/ and concepts/"):
        subject, uid = row["subject"], row["uid"]
        class_name, photos = _imagenhub_subject(root, subject)
        source = root / "inputs" / f"{uid}.jpg"
        if not source.is_file():
            raise SuiteError(f"ImagenHub editing sample {uid} has no input photo {source}")
        mask = root / "masks" / f"{uid}.png"
        prompt = " ".join(f"a photo of a {unique_token} {class_name}".split())
        items.append(
            EvalItem(
                f"{subject}/{uid}",
                subject,
                class_name,
                prompt,
                photos[0],
                tuple(photos),
                source,
                mask if mask.is_file() else None,
            )
        )
    return items


def _export_concepts(concept_rows, out: Path) -> None:
    counts: dict[str, int] = {}
    for row in concept_rows:
        folder = out / "concepts" / row["subject"]
        folder.mkdir(parents=True, exist_ok=True)
        index = counts[row["subject"]] = counts.get(row["subject"], -1) + 1
        row["image"].convert("RGB").save(folder / f"{index:02d}.jpg", quality=95)


def export_imagenhub_editing(eval_rows, concept_rows, out: str | Path) -> Path:
    """Write the local export `load_imagenhub_editing` reads.

    Args:
        eval_rows: Rows of ``ImagenHub/Subject_Driven_Image_Editing`` (split ``eval``): ``uid``, ``subject``,
            ``image`` (the photo to edit).
        concept_rows: Rows of ``ImagenHub/DreamBooth_Concepts`` (split ``train``): ``subject``, ``image``.
        out: Folder to write.
    """
    out = Path(out)
    _export_concepts(concept_rows, out)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in eval_rows:
        row["image"].convert("RGB").save(out / "inputs" / f"{row['uid']}.jpg", quality=95)
        lines.append(json.dumps({"uid": row["uid"], "subject": row["subject"]}))
    (out / IMAGENHUB_EDIT_ROWS).write_text("\n".join(lines) + "\n")
    return out


# Suite name -> loader(data folder, unique token) -> items.
SUITES = {
    "dreambench": load_dreambench,
    "dreambench-multi": load_dreambench_multi,
    "imagenhub-generation": load_imagenhub_generation,
    "imagenhub-editing": load_imagenhub_editing,
}
EDITING_SUITES = ("imagenhub-editing",)
# Suites that refine another method's images of a suite's items (`siso.eval.refine`) -> the suite of those items.
REFINE_SUITES = {"dreambench-refine": "dreambench"}


def generated_images(root: str | Path, item: EvalItem | MultiItem) -> list[Path]:
    """The generated images of ``item`` under ``root``; empty when the item has none yet."""
    folder = Path(root) / item.id
    return _images_in(folder) if folder.is_dir() else []
