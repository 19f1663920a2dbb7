"""The app's work without the web page: the models loaded once, one run at a time, a folder per browser session,
runs that stop at once and keep their best, and uploads checked before any work.

`siso.app.ui` puts a Gradio page on a `Studio`; the tests drive a `Studio` directly too. What a page sends is checked
in `siso.app.uploads`, the Edit and Refine tabs' requests become runs (`siso.runs.spec.RunSpec`) in `siso.app.edit`
and `siso.app.refine`, where runs are written in `siso.app.sessions`, and what a page shows of a run is a
`siso.app.progress.Progress`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from siso.app.edit import edit_spec
from siso.app.library import LibraryRuns, generation_job
from siso.app.progress import Progress, finished, frames, identities, photo_counts
from siso.app.refine import page_message, refine_spec
from siso.app.sessions import Sessions
from siso.app.settings import MAX_IMAGES, MAX_ITERS_LIMIT, MAX_PIXELS, MAX_UPLOAD_MB, AppSettings
from siso.app.uploads import (
    Photos,
    UploadError,
    check_upload,
    learn_subjects,
    run_config,
    train_prompt_for,
    unpack_subject_zip,
)
from siso.backbones import Backbone, config_for, load_backbone
from siso.config import OptimSettings, RefineConfig, SisoConfig
from siso.devices import resolve_dtype
from siso.lora import LoraError, load_saved_subject, unload_saved_subject
from siso.optimize import EarlyStopping
from siso.runs.models import Models
from siso.runs.run import run as run_spec
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError

__all__ = [
    "MAX_IMAGES",
    "MAX_ITERS_LIMIT",
    "MAX_PIXELS",
    "MAX_UPLOAD_MB",
    "AppSettings",
    "Progress",
    "Studio",
    "UploadError",
    "check_upload",
    "train_prompt_for",
]


class Studio(LibraryRuns):
    """The models, loaded once, and the runs of every browser session, one at a time; the library of saved subjects
    (`siso.app.library.LibraryRuns`: Save as, and drawing with saved subjects).

    Args:
        settings: The app's settings.
        backbone: An already loaded backbone (tests); else ``settings.model`` is loaded.
    """

    def __init__(self, settings: AppSettings, backbone: Backbone | None = None):
        self.settings = settings
        self.sessions = Sessions(settings.root)
        dtype = resolve_dtype(settings.dtype, settings.device)
        self.dtype = dtype
        # The backbone and similarity networks, loaded once and shared by every run (`siso.runs.run`).
        self.models = Models(backbone or load_backbone(settings.model, dtype, settings.device))
        # The family's settings with the app's own overrides: what the page shows as defaults (a refine's differ: its
        # strength, say).
        self.defaults = config_for(SisoConfig, settings.model, optim=settings.optim)
        self.refine_defaults = config_for(RefineConfig, settings.model, optim=settings.optim)
        self._busy = threading.Lock()  # one run at a time (the page queues them too)
        self._stops: dict[str, threading.Event] = {}
        self._subjects: dict[str, Path] = {}  # session -> its last learned LoRA folder
        self._loaded: Path | None = None  # the LoRA folder the backbone carries now

    @property
    def backbone(self) -> Backbone:
        """The app's backbone (it carries the LoRA of the last run or subject)."""
        return self.models.loaded

    @property
    def model_name(self) -> str:
        """The model as the page names it: a backbone name or Hub id as given, a local folder by its name."""
        model = self.settings.model
        return Path(model).name if Path(model).is_dir() else model

    @property
    def root(self) -> Path:
        """Where every run is written (the settings' root, absolute)."""
        return self.sessions.root

    def session_folder(self, session: str) -> Path:
        """``root/<session>``: the session id cleaned to letters, digits, - and _ (never a path elsewhere)."""
        return self.sessions.folder(session)

    # Learning and editing ---------------------------------------------------------------------------------------

    def _config(self, cls: type[SisoConfig], prompt: str, max_iters: int, lr: float | None, seed: int) -> SisoConfig:
        """A run's configuration with the page's prompt, max iterations, learning rate and seed
        (`siso.app.uploads.run_config`).

        Raises:
            UploadError: a value out of range (the message says which).
        """
        return run_config(self.settings, cls, prompt, max_iters, lr, seed)

    def learn(
        self,
        session: str,
        subject_path: Photos,
        train_prompt: str,
        subject_class: str = "",
        max_iters: int = OptimSettings.max_iters,
        lr: float | None = None,
        seed: int = 0,
        box: str = "",
        second_path: Photos = None,
        second_class: str = "",
        second_box: str = "",
    ) -> Iterator[Progress]:
        """Learn a subject (or two in one image, each in its box), yielding the run's progress after every iteration
        and once at its end.

        The run writes ``root/<session>/learn-<time>/`` (as `siso generate` writes its folder). `stop` (or closing
        this generator: a browser that went away) ends it when the iteration in progress ends, keeping the best so
        far.

        Args:
            subject_path: The subject's photo file, or several photos of the same subject (its loss averages over
                them; the status line says how many).
            box: Where the subject goes in the generated image, ``x0,y0,x1,y1`` in its pixels or in fractions of its
                sides (all four at most 1); empty: anywhere (one subject).
            second_path, second_class, second_box: A second subject's photo (or photos), class and box (all three
                needed, and then ``box`` too); the train prompt from the classes is "a photo of a {class} and a
                {class}".

        Raises:
            UploadError: a bad upload or field (before any work).
        """
        side = self.backbone.resolution
        subjects = learn_subjects(
            subject_path, subject_class, box, second_path, second_class, second_box, self.settings, side
        )
        prompt = train_prompt_for(train_prompt, *(subject.class_name or "" for subject in subjects))
        config = self._config(SisoConfig, prompt, max_iters, lr, seed)
        yield from self._stream(session, RunSpec("learn", config, None, subjects), photo_counts(subjects))

    def edit(
        self,
        session: str,
        scene: dict | None,
        box: str,
        subject_path: Photos,
        subject_class: str = "",
        prompt: str = "",
        max_iters: int = OptimSettings.max_iters,
        lr: float | None = None,
        seed: int = 0,
        second_path: Photos = None,
        second_class: str = "",
        second_box: str = "",
    ) -> Iterator[Progress]:
        """Put the subject (or two) into a photo in place of an object, with the progress of `learn`; the arguments
        after ``session`` are `siso.app.edit.edit_spec`'s.

        Raises:
            UploadError: no photo, no mask (nothing painted, no box), a bad box, a second subject without its class
                or box, or a model that cannot edit.
        """
        spec = edit_spec(
            self.settings, scene, box, subject_path, subject_class, prompt, max_iters, lr, seed, second_path,
            second_class, second_box,
        )  # fmt: skip
        yield from self._stream(session, spec, photo_counts(spec.subjects))

    def refine(
        self,
        session: str,
        image: dict | None,
        box: str,
        subject_path: Photos,
        subject_class: str = "",
        whole: bool = False,
        prompt: str = "",
        strength: float | None = None,
        structure_weight: float | None = None,
        composite: bool = False,
        max_iters: int = OptimSettings.max_iters,
        lr: float | None = None,
        seed: int = 0,
    ) -> Iterator[Progress]:
        """Give an image that already shows the subject the subject's identity, with the progress of `learn`; at the
        end, `Progress.similarity` has the region's similarity to the subject's photos before and after. The arguments
        after ``session`` are `siso.app.refine.refine_spec`'s.

        Raises:
            UploadError: no image, no subject photo, no region and no class, a bad box or value, a model that cannot
                edit (before any work), or the subject's class not found in the image.
        """
        spec = refine_spec(
            self.settings, image, box, subject_path, subject_class, whole, prompt, strength, structure_weight,
            composite, max_iters, lr, seed,
        )  # fmt: skip
        try:
            yield from self._stream(session, spec, photo_counts(spec.subjects))
        except MaskError as err:
            raise page_message(err) from None

    def _stream(self, session: str, spec: RunSpec, note: str) -> Iterator[Progress]:
        """Run ``spec`` (`siso.runs.run.run`, on the shared models) into a new run folder of the session in a thread,
        one at a time, yielding `Progress` after every iteration and once at the end, every message ending in
        ``note``."""
        stop = self._stops[session] = threading.Event()
        iterations: queue.Queue = queue.Queue()

        def callback(iteration: int, image: Image.Image, terms: dict) -> bool:
            iterations.put(terms)
            return stop.is_set()

        self._busy.acquire()  # released by the run's thread when it ends (a closed page does not wait for it)
        try:
            out = self.sessions.new_run(session, spec.kind)
        except BaseException:
            self._busy.release()
            raise
        outcome: dict = {}

        def work():
            try:
                self._unload()
                run = dataclasses.replace(spec, out=out)
                outcome["metrics"] = run_spec(run, self.models, progress=False, callback=callback)
                self._loaded = out.path / "lora"  # the backbone carries the best LoRA, as saved there
            except BaseException as err:  # shown on the page, not lost in a thread
                outcome["error"] = err
            finally:
                self._busy.release()

        thread = threading.Thread(target=work, name=f"siso-{spec.kind}", daemon=True)
        thread.start()
        losses: list[float] = []
        stopper = EarlyStopping(spec.config.optim.min_improvement, spec.config.optim.patience)
        best: int | None = None
        try:
            while thread.is_alive() or not iterations.empty():
                try:
                    terms = iterations.get(timeout=0.2)
                except queue.Empty:
                    continue
                loss = terms["loss"]
                if stopper.update(loss):
                    best = len(losses)
                losses.append(loss)
                message = (
                    f"Running: iteration {len(losses) - 1}, loss {loss:.4f} (best: iteration {best})"
                    + identities(terms)
                    + note
                )
                yield Progress(frames(out.path, losses, best), list(losses), best, True, message)
            thread.join()
        finally:
            stop.set()  # closed early (the page went away): the run ends with its iteration, keeping its best
            if self._stops.get(session) is stop:
                del self._stops[session]
        if "error" in outcome:
            raise outcome["error"]
        metrics = outcome["metrics"]
        self._subjects[session] = out.path / "lora"
        yield finished(out.path, metrics, *self.sessions.downloads(session, out.path), note)

    def stop(self, session: str) -> bool:
        """End the session's run at its next iteration (it keeps the best so far); False if none is running."""
        event = self._stops.get(session)
        if event is None:
            return False
        event.set()
        return True

    # Generating ---------------------------------------------------------------------------------------------------

    def subject_from_zip(self, session: str, zip_path: str | Path) -> Path:
        """Unpack an uploaded subject (a zip of a ``lora/`` folder, as the Learn tab offers) into the session's
        folder and check it.

        Raises:
            UploadError: not a zip, too large, names outside the folder, no LoRA weights, or another model's.
        """
        target = self.sessions.new_upload(session, "subject")
        return unpack_subject_zip(zip_path, target, self.settings.max_upload_mb, self.settings.model)

    def generate(
        self,
        session: str,
        prompts: str,
        num_images: int = 1,
        steps: int | None = None,
        seed: int = 0,
        subject_zip: str | Path | None = None,
    ) -> list[str]:
        """Images of the subject for every prompt (one per line) x ``num_images`` seeds, with the session's last
        learned subject, or an uploaded one; nothing is optimized. Written to ``root/<session>/generate-<time>/``.

        Raises:
            UploadError: no subject, no prompt, or values out of range.
        """
        job = generation_job(prompts, num_images, steps, seed, self.defaults.optim)
        with self._busy:
            lora = self.subject_from_zip(session, subject_zip) if subject_zip else self._subjects.get(session)
            if lora is None:
                raise UploadError("learn a subject first (Learn a subject tab), or upload a subject zip")
            if self._loaded != lora:
                self._unload()
                try:
                    load_saved_subject(self.backbone, lora)  # its IP-Adapter too, when it was learned over one
                except LoraError as err:
                    raise UploadError(str(err)) from None
                self._loaded = lora
            out = self.sessions.new_run(session, "generate")
            out.write_json("config.json", {"lora": str(lora), "model": self.settings.model, "job": job.__dict__})
            records = out.generate_images(self.backbone, job, progress=False)
            out.write_json("metrics.json", {"complete": True, "images": records})
        return [str(out.path / record["file"]) for record in records]

    def _unload(self) -> None:
        """Take any subject off the backbone, LoRA and IP-Adapter (a new subject starts from the base model)."""
        unload_saved_subject(self.backbone)
        self._loaded = None
