"""Download a suite into the local layout `siso.eval.suites` reads (needs internet; run once)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from siso.eval.suites import export_imagenhub_generation

DREAMBENCH_REPO = "https://github.com/google/dreambooth"


def fetch(suite: str, out: str | Path) -> Path:
    """Fetch ``suite`` into ``out``.

    DreamBench is a ``git clone`` of the google/dreambooth repository; ImagenHub is read with the ``datasets``
    package (``pip install datasets``) and exported to image files and a JSONL.

    Raises:
        ValueError: unknown suite, or ``datasets`` is not installed.
        subprocess.CalledProcessError: ``git clone`` failed.
    """
    out = Path(out)
    if suite == "dreambench":
        subprocess.run(["git", "clone", "--depth", "1", DREAMBENCH_REPO, str(out)], check=True)
    elif suite == "imagenhub-generation":
        try:
            from datasets import load_dataset  # optional: only this command needs it
        except ImportError:
            raise ValueError("fetching ImagenHub needs the datasets package: pip install datasets") from None
        rows = load_dataset("ImagenHub/Subject_Driven_Image_Generation", split="eval")
        concepts = load_dataset("ImagenHub/DreamBooth_Concepts", split="train")
        export_imagenhub_generation(rows, concepts, out)
    else:
        raise ValueError(f"unknown suite {suite!r}; fetchable: dreambench, imagenhub-generation")
    return out
