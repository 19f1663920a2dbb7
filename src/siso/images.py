"""Reading the subject photo and writing pictures: plain PIL and torch, no torchvision."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

MIN_SUBJECT_SIDE = 64


class ImageError(ValueError):
    """A subject photo that cannot be used; the message says why and what to do."""


def load_subject(path: str | Path, what: str = "subject photo") -> Image.Image:
    """Read a photo (the subject, or the photo to edit: ``what`` names it in errors) as an upright 8-bit RGB image.

    EXIF orientation is applied; transparency is composited over white; grayscale, palette, CMYK and 16-bit images
    are converted (16-bit values are scaled, not clipped). The photo keeps its aspect ratio: the similarity networks
    centre-crop it to a square, so the sides of a non-square photo are not seen (crop it yourself to keep them).

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated, or smaller than 64 px on a side.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{what} not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except PermissionError:
        raise ImageError(f"cannot read {what} {path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{what} {path} is not an image PIL can read (PNG, JPEG, WebP, ... expected)") from None
    except (OSError, SyntaxError) as err:
        raise ImageError(f"cannot read {what} {path}: {err} (is the file truncated or damaged?)") from None
    if min(img.size) < MIN_SUBJECT_SIDE:
        raise ImageError(
            f"{what} {path} is {img.width}x{img.height} px; at least {MIN_SUBJECT_SIDE} px per side is needed"
        )
    return _to_rgb(img)


# What a folder of subject photos is read for (other files in it, a notes.txt, are left alone).
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_photos(path: str | Path) -> tuple[list[Image.Image], list[str]]:
    """The subject photos of ``path``: one photo file, or every photo in a folder (`PHOTO_SUFFIXES`, hidden files
    left out, in name order), each read by `load_subject`.

    Returns:
        The photos and their files.

    Raises:
        ImageError: the path is missing, a folder holds no photo, or one of its photos is unusable (naming the file).
    """
    path = Path(path)
    if not path.is_dir():
        return [load_subject(path)], [str(path)]
    files = sorted(
        p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        raise ImageError(f"subject folder {path} holds no photo ({', '.join(PHOTO_SUFFIXES)})")
    return [load_subject(file) for file in files], [str(file) for file in files]


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: PIL's convert("RGB") clips to 255, so scale explicitly.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor of shape (1, 3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [0, 1] -> list of RGB PIL images (rounded like diffusers' ``numpy_to_pil``).

    NaN pixels (a diverged run) become black rather than undefined.
    """
    arr = images.detach().float().nan_to_num(0.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def contact_sheet(images: list[Image.Image], labels: list[str], thumb: int = 128) -> Image.Image:
    """Grid of thumbnails with a caption under each (the image of every iteration, on one page)."""
    cols = min(len(images), 8)
    rows = math.ceil(len(images) / cols)
    caption = 14
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + caption)
        sheet.paste(img.resize((thumb, thumb), Image.Resampling.LANCZOS), (x, y))
        draw.text((x + 2, y + thumb + 1), label, fill="black")
    return sheet


def loss_plot(series: dict[str, list[float]], best_iteration: int, size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Line plot of per-iteration loss terms, drawn with PIL (no plotting dependency). Non-finite values are skipped.

    Args:
        series: Name -> one value per iteration.
        best_iteration: Marked with a vertical line.
    """
    width, height = size
    left, right, top, bottom = 60, 120, 20, 30
    # Ten colours: a run of several subjects plots up to about ten terms (per network, per subject, leakage, ...).
    colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ]  # fmt: skip
    plot = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(plot)
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    n = max(len(values) for values in series.values())
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / max(n - 1, 1))
        y = top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        draw.text((4, xy(0, value)[1] - 6), f"{value:.4g}", fill="black")
    draw.text((left, height - bottom + 8), "iteration 0", fill="black")
    draw.text((width - right - 40, height - bottom + 8), str(n - 1), fill="black")
    bx = xy(best_iteration, lo)[0]
    draw.line([bx, top, bx, height - bottom], fill="#999999", width=1)
    for k, (name, values) in enumerate(series.items()):
        color = colors[k % len(colors)]
        points = [xy(i, v) for i, v in enumerate(values) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.text((width - right + 8, top + 16 * k), name, fill=color)
    draw.text((width - right + 8, top + 16 * len(series)), f"best: {best_iteration}", fill="#666666")
    return plot
