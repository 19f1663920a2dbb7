"""Writing files so that no reader ever sees half of one: every JSON file, image and folder siso writes goes through
here. Each is written beside its final name, then renamed over it (a rename is atomic within a file system), so a
crash or Ctrl-C leaves either the old file or the new one. JSON is strict (no NaN literals)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

__all__ = ["atomic_folder", "save_image", "strict_json", "write_atomic", "write_json"]


def strict_json(value):
    """NaN and infinities (a diverged loss, an empty mean) become null: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically."""
    path = Path(path)
    partial = _partial(path)
    if isinstance(data, bytes):
        partial.write_bytes(data)
    else:
        partial.write_text(data)
    os.replace(partial, path)


def write_json(path: str | Path, data) -> None:
    """Write ``data`` to ``path`` as indented strict JSON, atomically."""
    write_atomic(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def save_image(image: Image.Image, path: str | Path) -> None:
    """Save ``image`` to ``path`` atomically, in the format its suffix names (``.png``)."""
    path = Path(path)
    partial = _partial(path)
    image.save(partial, format=Image.registered_extensions()[path.suffix.lower()])
    os.replace(partial, path)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Fill a folder that appears at ``path`` whole, or not at all.

    Yields a fresh folder beside ``path``; when the block ends without an error it replaces ``path`` (an existing
    folder there is removed first), and on an error it is removed.
    """
    path = Path(path)
    partial = _partial(path)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)  # a folder without its files is not a finished one
    os.replace(partial, path)
