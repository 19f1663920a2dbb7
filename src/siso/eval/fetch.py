"""Download a suite into the local layout `siso.eval.suites` reads (needs internet; run once)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from siso.eval.suites import export_imagenhub_editing, export_imagenhub_generation

DREAMBENCH_REPO = "https://github.com/google/dreambooth"
IMAGENHUB = {
    "imagenhub-generation": ("ImagenHub/Subject_Driven_Image_Generation", export_imagenhub_generation),
    "imagenhub-editing": ("ImagenHub/Subject_Driven_Image_Editing", export_imagenhub_editing),
}


def fetch(suite: str, out: str | Path) -> Path:
    """Fetch ``suite`` into ``out``.

    DreamBench (and dreambench-multi, built from the same folder) is a ``git clone`` of the google/dreambooth
    repository; ImagenHub is read with the ``datasets``
    package (``pip install datasets``) and exported to image files and a JSONL.

    Raises:
        ValueError: unknown suite, ``out`` is not a new or empty folder, ``datasets`` is not installed, or
            ``git clone`` failed.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; pass a new folder to fetch {suite} into")
    if suite in ("dreambench", "dreambench-multi"):
        git = subprocess.run(
            ["git", "clone", "--depth", "1", DREAMBENCH_REPO, str(out)], capture_output=True, text=True
        )
        if git.returncode:
            reason = (git.stderr.strip().splitlines() or [f"exit status {git.returncode}"])[-1]
            raise ValueError(f"git clone {DREAMBENCH_REPO} failed ({reason}); check the internet connection")
    elif suite in IMAGENHUB:
        try:
            from datasets import load_dataset  # optional: only this command needs it
        except ImportError:
            raise ValueError("fetching ImagenHub needs the datasets package: pip install datasets") from None
        dataset, export = IMAGENHUB[suite]
        rows = load_dataset(dataset, split="eval")
        concepts = load_dataset("ImagenHub/DreamBooth_Concepts", split="train")
        export(rows, concepts, out)
    else:
        raise ValueError(f"unknown suite {suite!r}; fetchable: dreambench, dreambench-multi, {', '.join(IMAGENHUB)}")
    return out
