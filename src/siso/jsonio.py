"""Crash-safe JSON files: strict JSON (no NaN literals), written atomically so no reader sees half a file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def strict_json(value):
    """NaN and infinities (a diverged loss, an empty mean) become null: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    write_atomic(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")
