"""What the app's page shows of a run: the frames written so far, the losses, the best iteration, a message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from siso.compose import Subject, subject_names


@dataclass
class Progress:
    """What the page shows of a run, after each iteration and once at its end.

    Attributes:
        frames: (image file, caption) per iteration written so far.
        losses: The loss per iteration so far.
        best_iteration: The best iteration so far (the loop's own rule: `siso.optimize.EarlyStopping`).
        running: Whether the run goes on.
        message: One line on where the run stands (at the end: why it stopped).
        best_image, lora_zip, run_zip: At the end: the best image, the subject's LoRA folder zipped, the whole run
            folder zipped.
        similarity: At the end of a refine: (subject term, network, before, after) per row (`similarity`).
    """

    frames: list[tuple[str, str]]
    losses: list[float]
    best_iteration: int | None
    running: bool
    message: str
    best_image: str | None = None
    lora_zip: str | None = None
    run_zip: str | None = None
    similarity: list[tuple[str, str, float, float]] | None = None


def frames(run: Path, losses: list[float], best: int | None) -> list[tuple[str, str]]:
    """The iteration images written so far, captioned with their iteration and loss (the best one marked)."""
    frames = []
    for path in sorted((run / "iterations").glob("*.png")):
        iteration = int(path.stem)
        caption = f"{iteration}: {losses[iteration]:.4f}" if iteration < len(losses) else f"{iteration}"
        frames.append((str(path), caption + (" (best)" if iteration == best else "")))
    return frames


def identities(terms: dict) -> str:
    """Each subject's identity term of several subjects (or one in a box), as ``"; identity: dog 0.4123, cat
    0.5012"``; empty for one subject anywhere (no ``identity/<name>`` terms)."""
    named = [
        f"{key.removeprefix('identity/')} {value:.4f}" for key, value in terms.items() if key.startswith("identity/")
    ]
    return f"; identity: {', '.join(named)}" if named else ""


def photo_counts(subjects: Sequence[Subject]) -> str:
    """How many photos the run learns each subject from, as ``"; subject: 3 photos"`` (one subject), or by the names
    of their identity terms, ``"; photos: dog 3, cat 1"``."""
    if len(subjects) == 1:
        count = len(subjects[0].photos)
        return f"; subject: {count} photo{'s' if count > 1 else ''}"
    names = subject_names([subject.class_name for subject in subjects])
    return "; photos: " + ", ".join(f"{name} {len(s.photos)}" for name, s in zip(names, subjects, strict=True))


def similarity(metrics: dict) -> list[tuple[str, str, float, float]] | None:
    """A refine's similarity of each subject's region to its photos before and after (metrics.json's ``before`` and
    ``after``), as (subject term, network, before, after) rows, per network of the loss and the check network;
    ``None`` for a run that reports none."""
    if "before" not in metrics:
        return None
    return [
        (term, network, score, metrics["after"][term][network])
        for term, scores in metrics["before"].items()
        for network, score in scores.items()
    ]


def finished(run: Path, metrics: dict, lora_zip: str, run_zip: str, note: str = "") -> Progress:
    """What the page shows of a run that ended: why, its best iteration (with each subject's identity term), ``note``
    (`photo_counts`), the downloads, and a refine's `similarity`."""
    best = metrics["best_iteration"]
    reason = {"converged": "the loss stopped improving", "max_iters": "max iterations reached"}.get(
        metrics["stop_reason"], "stopped"
    )
    message = (
        f"Done: {reason} after {len(metrics['iterations'])} iterations; best: iteration {best} "
        f"(loss {metrics['best_loss']:.4f}{identities(metrics['iterations'][best])}), "
        f"{metrics['seconds_per_iteration']:.2f} s/iteration{note}"
    )
    losses = [h["loss"] for h in metrics["iterations"]]
    best_image = str(run / "best.png")
    return Progress(
        frames(run, losses, best), losses, best, False, message, best_image, lora_zip, run_zip, similarity(metrics)
    )
