"""What the app takes from a page before any work: uploaded photos and subject zips within limits, the subjects of a
run with their classes and boxes, the train prompt, number fields and the run's settings from them; every refusal is
an `UploadError` whose message is for the page."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from siso.app.settings import MAX_ITERS_LIMIT, MAX_PHOTOS, AppSettings
from siso.backbones import config_for
from siso.compose import Box, BoxError, Subject
from siso.config import SisoConfig
from siso.devices import resolve_dtype
from siso.images import MIN_SUBJECT_SIDE, ImageError, load_subject
from siso.lora import WEIGHTS_FILE, LoraError, check_lora_file, read_subject_info
from siso.vision.masks import MaskError, box_mask

# What a page sends for a subject's photos: one file, or several of the same subject (none: nothing uploaded).
Photos = str | Path | Sequence[str | Path] | None
C = TypeVar("C", bound=SisoConfig)


class UploadError(ValueError):
    """An upload or a field the app cannot use; the message is for the page."""


def check_upload(path: str | Path | None, settings: AppSettings, what: str) -> Image.Image:
    """Read an uploaded photo within the app's limits (`siso.images.load_subject`'s checks too).

    Raises:
        UploadError: nothing uploaded, a file over the size or pixel limit, or not a usable image (the message names
            the file, never its folder on the server).
    """
    if not path:
        raise UploadError(f"upload a {what} first")
    path = Path(path)
    megabytes = path.stat().st_size / 1e6
    if megabytes > settings.max_upload_mb:
        raise UploadError(f"the {what} {path.name} is {megabytes:.1f} MB; the limit is {settings.max_upload_mb:g} MB")
    try:
        with Image.open(path) as img:  # reads the header only: the pixel count before any decoding
            pixels = img.width * img.height
    except (OSError, SyntaxError, Image.DecompressionBombError):
        pixels = 0  # load_subject says what is wrong with the file
    if pixels > settings.max_pixels:
        raise UploadError(
            f"the {what} {path.name} has {pixels / 1e6:.1f} megapixels; the limit is {settings.max_pixels / 1e6:g}"
        )
    try:
        return load_subject(path, what=what)
    except ImageError as err:
        raise UploadError(str(err).replace(str(path), path.name)) from None


def upload_subject(photos: Photos, settings: AppSettings, what: str, class_name: str) -> Subject:
    """A subject from its uploaded photos (one file, or several of the same subject: its loss averages over them),
    each read by `check_upload`, and its class; config.json lists every photo by its file name.

    Raises:
        UploadError: no photo, more than `MAX_PHOTOS`, or a photo `check_upload` refuses.
    """
    paths = [photos] if isinstance(photos, str | Path) else list(photos or ())
    if not paths:
        raise UploadError(f"upload a {what} first")
    if len(paths) > MAX_PHOTOS:
        raise UploadError(f"{len(paths)} photos of one subject; at most {MAX_PHOTOS}")
    images = [check_upload(path, settings, what) for path in paths]
    names = [Path(path).name for path in paths]
    # The first photo stands for the subject where config.json names one ("photo"); "photos" lists them all.
    return Subject(images, class_name.strip() or None, path=names[0], files=names)


def train_prompt_for(prompt: str, *classes: str) -> str:
    """The train prompt: as typed, else "a photo of a {class}" from the subject's class ("a photo of a {class} and a
    {class}" for two subjects).

    Raises:
        UploadError: no prompt, and a subject without its class.
    """
    if prompt.strip():
        return prompt.strip()
    named = [name.strip() for name in classes]
    if all(named):
        return "a photo of " + " and ".join(f"a {name}" for name in named)
    raise UploadError(f"type a train prompt, or {'each' if len(named) > 1 else 'the'} subject's class (e.g. dog)")


def read_box(text: str, side: int, what: str) -> Box | None:
    """A typed box ``x0,y0,x1,y1`` in the generated image (``side`` px square): pixels, or fractions of its sides when
    all four are at most 1 (`siso.compose.Box`); ``None`` when left empty.

    Raises:
        UploadError: not four numbers, an empty box, or one reaching outside the image (the message names ``what``).
    """
    if not (text or "").strip():
        return None
    try:
        box = Box.parse(text.strip())
        box.pixels(side, side)
    except BoxError as err:
        raise UploadError(f"{what}: {err}") from None
    return box


def second_subject(photos: Photos, subject_class: str, box: str, settings: AppSettings) -> Subject | None:
    """A second subject's photos and class when a photo is given (``None`` when not), checked with its box.

    Raises:
        UploadError: its class or box without a photo, a photo without its class or box, or a bad photo.
    """
    if not photos:
        if subject_class.strip() or box.strip():
            raise UploadError("upload the second subject's photo, or clear its class and box")
        return None
    second = upload_subject(photos, settings, "second subject photo", subject_class)
    if not subject_class.strip():
        raise UploadError("type the second subject's class (e.g. cat)")
    if not box.strip():
        raise UploadError("give the second subject its box (x0,y0,x1,y1): where it goes")
    return second


def learn_subjects(
    subject_path: Photos,
    subject_class: str,
    box: str,
    second_path: Photos,
    second_class: str,
    second_box: str,
    settings: AppSettings,
    side: int,
) -> list[Subject]:
    """The Learn tab's subjects: the first (its box optional), and a second when its photo is given, which needs its
    class and a box for each subject (the app places no subject by detection).

    Args:
        subject_path, second_path: Each subject's photo, or several photos of it (`upload_subject`).
        box, second_box: ``x0,y0,x1,y1`` in the generated image (`read_box`), or empty.
        side: The generated image's side in pixels.

    Raises:
        UploadError: a bad photo or box, a second subject's class or box without its photo, or a second subject
            without its class or without boxes.
    """
    first = upload_subject(subject_path, settings, "subject photo", subject_class)
    first.box = read_box(box, side, "the subject's box")
    second = second_subject(second_path, second_class, second_box, settings)
    if second is None:
        return [first]
    second.box = read_box(second_box, side, "the second subject's box")
    if first.box is None:
        raise UploadError("with two subjects, give each its box (x0,y0,x1,y1): where it goes in the image")
    return [first, second]


def edit_subjects(
    subject_path: Photos,
    subject_class: str,
    region: np.ndarray,
    second_path: Photos,
    second_class: str,
    second_box: str,
    settings: AppSettings,
    photo: Image.Image,
) -> list[Subject]:
    """The Edit tab's subjects: the first, whose region is ``region`` (what was painted, or its box), and a second
    when its photo is given, with its class and its box in the photo's pixels; each with its photo, or several
    photos of it (`upload_subject`).

    Raises:
        UploadError: a bad photo or box, a second subject's class or box without its photo, or a second subject
            without its class or box.
    """
    first = upload_subject(subject_path, settings, "subject photo", subject_class)
    first.region = region
    second = second_subject(second_path, second_class, second_box, settings)
    if second is None:
        return [first]
    try:
        second.region = box_mask(second_box.strip(), photo.size)
    except MaskError as err:
        raise UploadError(f"the second subject's box: {err}") from None
    return [first, second]


def unpack_subject_zip(zip_path: str | Path, target: Path, max_upload_mb: float, model: str) -> Path:
    """Unpack an uploaded subject (a zip of a ``lora/`` folder) into ``target`` and check it; returns its LoRA folder.

    Raises:
        UploadError: not a zip, too large, names outside the folder, not one LoRA folder, damaged weights, or a
            subject learned on another model than ``model``.
    """
    zip_path = Path(zip_path)
    megabytes = zip_path.stat().st_size / 1e6
    if megabytes > max_upload_mb:
        raise UploadError(f"the subject zip is {megabytes:.1f} MB; the limit is {max_upload_mb:g} MB")
    if not zipfile.is_zipfile(zip_path):
        raise UploadError(f"{zip_path.name} is not a zip file (download one from the Learn tab)")
    with zipfile.ZipFile(zip_path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > 4 * max_upload_mb * 1e6:
            raise UploadError("the subject zip unpacks to too much data")
        for name in archive.namelist():
            if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                raise UploadError(f"the subject zip holds a path outside its folder: {name}")
        archive.extractall(target)
    found = [p.parent for p in target.rglob(WEIGHTS_FILE)]
    if len(found) != 1:
        shutil.rmtree(target, ignore_errors=True)
        raise UploadError(f"the subject zip must hold one LoRA folder ({WEIGHTS_FILE}); it holds {len(found)}")
    folder = found[0]
    try:
        check_lora_file(folder)
    except LoraError as err:
        raise UploadError(str(err).replace(str(folder), zip_path.name)) from None
    learned_on = read_subject_info(folder).get("model")
    if learned_on is not None and learned_on != model:
        raise UploadError(f"this subject was learned on {learned_on}; the app runs {model}")
    return folder


def whole_number(value, name: str) -> int:
    """A page's number field as a whole number.

    Raises:
        UploadError: empty, or not a whole number.
    """
    if value is None or value == "":
        raise UploadError(f"{name} is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UploadError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise UploadError(f"{name} must be a whole number, got {value}")
    return int(number)


def run_config(settings: AppSettings, cls: type[C], prompt: str | None, max_iters, lr, seed, **groups) -> C:
    """A run's configuration (`siso.backbones.config_for` of ``cls``) with the app's settings and the page's prompt,
    max iterations, learning rate and seed; ``groups``: more settings per group, as `config_for` takes them.

    Raises:
        UploadError: a value out of range (the message says which).
    """
    max_iters = whole_number(max_iters, "max iterations")
    if not 1 <= max_iters <= MAX_ITERS_LIMIT:
        raise UploadError(f"max iterations must be 1 to {MAX_ITERS_LIMIT}, got {max_iters}")
    optim = {**settings.optim, "max_iters": max_iters, "lr": lr, "seed": whole_number(seed, "seed")}
    try:
        return config_for(
            cls,
            settings.model,
            train_prompt=prompt,
            dtype=resolve_dtype(settings.dtype, settings.device),
            device=settings.device,
            similarity=settings.similarity,
            optim=optim,
            **groups,
        )
    except ValueError as err:
        raise UploadError(str(err)) from None


def scene_photo(scene: dict | None, settings: AppSettings, what: str) -> tuple[Image.Image, np.ndarray]:
    """The photo in Gradio's image editor (``background``, numpy) and what was painted on it (``layers``: RGBA; a
    pixel with any paint is painted), as (H, W) bool in the photo's pixels; nothing painted: all False.

    Raises:
        UploadError: no photo, or one over the pixel limit or too small (the message names ``what``).
    """
    background = (scene or {}).get("background")
    if background is None:
        raise UploadError(f"upload the {what} first")
    height, width = background.shape[:2]
    if height * width > settings.max_pixels:
        raise UploadError(
            f"the {what} has {height * width / 1e6:.1f} megapixels; the limit is {settings.max_pixels / 1e6:g}"
        )
    if min(height, width) < MIN_SUBJECT_SIDE:
        raise UploadError(f"the {what} is {width}x{height} px; at least {MIN_SUBJECT_SIDE} px per side")
    photo = Image.fromarray(np.asarray(background)[..., :3].astype(np.uint8))
    painted = np.zeros((height, width), dtype=bool)
    for layer in (scene or {}).get("layers") or []:
        if layer is not None and layer.ndim == 3 and layer.shape[:2] == (height, width) and layer.shape[2] == 4:
            painted |= layer[..., 3] > 0
    return photo, painted


def scene_and_mask(scene: dict | None, box: str, settings: AppSettings) -> tuple[Image.Image, np.ndarray, str]:
    """The photo to edit and the object's mask from the page: the painted pixels, else the box; and how it was made.

    Raises:
        UploadError: no photo, one over the pixel limit or too small, no mask, or a bad box.
    """
    photo, painted = scene_photo(scene, settings, "photo to edit")
    try:
        if painted.any():
            return photo, painted, "painted in the app"
        if box and box.strip():
            return photo, box_mask(box, photo.size), f"box {box.strip()}"
    except MaskError as err:
        raise UploadError(str(err)) from None
    raise UploadError("paint over the object to replace, or give a box around it (x0,y0,x1,y1)")
