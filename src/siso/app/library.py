"""The app's library of saved subjects (`siso.library`): "Save as" keeps the subject of a session's last run, and the
Generate tab draws with saved subjects, one alone (a ``reuse`` run) or several side by side (a ``compose`` run),
nothing learned."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from siso.app.settings import MAX_IMAGES
from siso.app.uploads import UploadError, run_config, whole_number
from siso.compose.boxes import Box, default_slots
from siso.compose.saved import is_composed, read_saved
from siso.config import OptimSettings, SisoConfig
from siso.library import Library, check_family
from siso.runs.jobs import GenerationJob
from siso.runs.run import run as run_spec
from siso.runs.spec import RunSpec


def generation_job(prompts: str, num_images, steps, seed, optim: OptimSettings) -> GenerationJob:
    """The Generate tab's images: every prompt (one per line) x ``num_images`` seeds from ``seed``, with ``steps``
    denoising steps (``None``: ``optim``'s).

    Raises:
        UploadError: no prompt, or values out of range.
    """
    lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
    if not lines:
        raise UploadError("type at least one prompt (one per line)")
    num_images, seed = whole_number(num_images, "number of images"), whole_number(seed, "seed")
    if not 1 <= num_images <= MAX_IMAGES:
        raise UploadError(f"number of images must be 1 to {MAX_IMAGES}, got {num_images}")
    try:
        return GenerationJob(
            lines,
            [seed + k for k in range(num_images)],
            optim.num_inference_steps if steps is None else whole_number(steps, "steps"),
            optim.guidance_scale,
        )
    except ValueError as err:
        raise UploadError(str(err)) from None


def subject_boxes(text: str, count: int) -> list[Box] | None:
    """The Generate tab's boxes of ``count`` saved subjects, one ``x0,y0,x1,y1`` per line in their order; empty:
    ``None`` for one subject (the whole image), side by side (`siso.compose.default_slots`) for several.

    Raises:
        UploadError: not one box per subject.
        BoxError: a box that is not four numbers.
    """
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return None if count == 1 else default_slots(count)
    if len(lines) != count:
        raise UploadError(f"give one box per chosen subject ({count}), one per line, or none (side by side)")
    return [Box.parse(line) for line in lines]


class LibraryRuns:
    """`siso.app.studio.Studio`'s work with the library of saved subjects (a mixin: it uses the studio's settings,
    sessions, models and its one-run-at-a-time lock)."""

    @property
    def library(self) -> Library:
        """The library of saved subjects (`siso.app.settings.AppSettings.library`)."""
        return Library(self.settings.library)

    def saved_names(self) -> list[str]:
        """The names of the library's subjects, sorted (read anew at every call: the CLI may have saved more)."""
        return self.library.names()

    def save_subject(self, session: str, name: str, overwrite: bool = False) -> str:
        """Keep the subject of the session's last run (learn, edit or refine: its ``lora/`` folder) in the library as
        ``name``; returns the line the page shows.

        Raises:
            UploadError: no run yet, or ``name`` is taken and not ``overwrite``.
            LibraryError: a bad name, or a library that cannot be written.
        """
        lora = self._subjects.get(session)
        if lora is None:
            raise UploadError("nothing to save yet: learn a subject (or edit, or refine) first, then save it")
        name = (name or "").strip()
        library = self.library
        if name in library.names() and not overwrite:
            raise UploadError(f"the library already has a subject named {name}; tick Overwrite, or pick another name")
        library.save(lora, name, overwrite)
        return f"Saved the subject of {lora.parent.name} as **{name}**: choose it on the Generate tab."

    def draw_saved(
        self,
        session: str,
        names: Sequence[str],
        prompts: str,
        num_images: int = 1,
        steps: int | None = None,
        seed: int = 0,
        boxes: str = "",
    ) -> list[str]:
        """Images of the saved subjects ``names`` for every prompt x seed, nothing learned: one subject is drawn
        alone (a composed one with its recorded boxes), several side by side or in ``boxes`` (`subject_boxes`).
        Written to ``root/<session>/reuse-<time>/`` or ``compose-<time>/``; the backbone carries no subject after.

        Raises:
            UploadError: no subject chosen, a composed subject among others or with boxes, or a field out of range.
            LibraryError: a name not in the library, or a subject of another model family than the app's.
            ValueError, LoraError: subjects that cannot share an image (`siso.compose.saved.check_composable`), or
                weights that do not fit the model.
        """
        names = list(names or [])
        if not names:
            raise UploadError("choose a saved subject (or several)")
        job = generation_job(prompts, num_images, steps, seed, self.defaults.optim)
        folders = [self.library.resolve(name) for name in names]
        for folder in folders:
            check_family(folder, self.settings.model)
        composed = [name for name, folder in zip(names, folders, strict=True) if is_composed(folder)]
        if composed and len(names) > 1:
            raise UploadError(f"{composed[0]} is a composition of saved subjects: draw it alone")
        if composed and (boxes or "").strip():
            raise UploadError(f"{composed[0]} is a composition: its subjects' boxes are recorded; give it no boxes")
        config: SisoConfig = run_config(self.settings, SisoConfig, job.prompts[0], 1, None, job.seeds[0])
        places = [None] if composed else subject_boxes(boxes, len(names))
        if places is None:
            spec = RunSpec("reuse", config, None, job=job, lora=folders[0])
        else:
            saved = [
                subject
                for name, folder, box in zip(names, folders, places, strict=True)
                for subject in read_saved(folder, name, box)
            ]
            spec = RunSpec("compose", config, None, job=job, saved=saved)
        with self._busy:
            self._unload()
            out = self.sessions.new_run(session, spec.kind)
            try:
                metrics = run_spec(dataclasses.replace(spec, out=out), self.models, progress=False)
            finally:
                self._unload()  # a composition leaves an adapter per subject on the backbone; a reuse, its subject
        return [str(Path(out.path) / record["file"]) for record in metrics["images"]]
