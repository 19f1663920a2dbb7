"""What one run does, described once (`RunSpec`): the CLI, the app, ``eval run`` and ``siso bench`` each translate
their input into it, and `siso.runs.run.run` runs it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from siso.compose import Subject, check_subjects
from siso.compose.regional import EDGE
from siso.compose.saved import SavedSubject
from siso.config import EditConfig, RefineConfig, SisoConfig
from siso.devices import resolve_dtype
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob, GenerationJob, RefineJob
from siso.vision.grounding import DEFAULT_DETECTOR

# learn: optimize the subjects (each in its box, if given), save them, then draw the job's prompts with them;
# edit: put the subjects into the job's photo (ReNoise inversion, background term); reuse: draw the job's prompts
# with a saved subject, nothing optimized; refine: give an image that shows the subjects their identity (an edit of
# each subject's own region, `siso.runs.refine`); compose: draw the job's prompts with several saved subjects, each in
# its region, and optionally polish them together (`siso.runs.compose`).
RUN_KINDS = ("learn", "edit", "refine", "reuse", "compose")


@dataclass
class RunSpec:
    """One run: its kind, what it learns from, what it makes, its settings and where it writes.

    The settings are merged once by the entry point (`siso.backbones.config_for`: the family's defaults, then what
    was given); ``config.dtype`` ``auto`` is resolved here, once, and is what the run loads, records and passes on.

    Attributes:
        kind: One of `RUN_KINDS`.
        config: The run's settings: `SisoConfig` (learn, reuse, compose: its ``model``, ``dtype``, ``device`` and
            ``memory.quantize`` load the backbone; a reuse or compose run's model is the saved subjects',
            ``siso_subject.json``'s ``model``; a compose run's polish takes its ``optim``, ``similarity`` and
            ``compose``), `EditConfig` (edit) or `RefineConfig` (refine).
        out: The run folder it writes; ``None`` only for a run that is measured, not run (`siso bench` times the
            loop of the run it describes and keeps no folder): `siso.runs.run.run` refuses it.
        subjects: learn, edit and refine: the subjects (photos, class, box or region); reuse, compose: none.
        job: learn: the images to draw after learning (``None``: none); edit: the photo and where the object is
            (`EditJob`); refine: the image and how to find the regions (`RefineJob`); reuse, compose: the images to
            draw.
        lora: reuse: the saved subject's folder (`siso.lora.save_lora`'s).
        command: The command line, for config.json.
        paths: edit and refine: the files the run read (``image``, ``mask``, ``subject``), for config.json.
        detector: Grounding DINO, to place several subjects without boxes and to name a subject's class when the
            generic negative needs it.
        saved: compose: the saved subjects (`siso.compose.saved.read_saved`), each with its box or none.
        polish: compose: iterations of the composed loss after composing (0: none).
        edge: compose: the regions' soft edge in image pixels (`siso.compose.regional.EDGE`; 0: hard).

    Raises:
        ValueError: an unknown kind, a kind without what it needs (subjects, a job of the right type, a saved
            subject), or settings of the wrong kind.
    """

    kind: str
    config: SisoConfig
    out: RunFolder | None
    subjects: Sequence[Subject] = field(default_factory=list)
    job: GenerationJob | EditJob | RefineJob | None = None
    lora: Path | None = None
    command: list[str] | None = None
    paths: dict | None = None
    detector: str = DEFAULT_DETECTOR
    saved: Sequence[SavedSubject] = field(default_factory=list)
    polish: int = 0
    edge: float = EDGE

    def __post_init__(self):
        if self.kind not in RUN_KINDS:
            raise ValueError(f"a run's kind is one of {', '.join(RUN_KINDS)}, got {self.kind!r}")
        self.subjects = list(self.subjects)
        if self.kind == "compose":
            if not self.saved or not isinstance(self.job, GenerationJob) or self.subjects:
                raise ValueError("a compose run takes saved subjects and a GenerationJob, and no subjects to learn")
            if isinstance(self.polish, bool) or not isinstance(self.polish, int) or self.polish < 0:
                raise ValueError(f"polish is a whole number of iterations >= 0, got {self.polish!r}")
        elif self.kind == "reuse":
            if self.lora is None or not isinstance(self.job, GenerationJob) or self.subjects:
                raise ValueError("a reuse run takes a saved subject (lora) and a GenerationJob, and no subjects")
            self.lora = Path(self.lora)
        else:
            check_subjects(self.subjects)
        if self.kind == "learn" and not isinstance(self.job, GenerationJob | None):
            raise ValueError("a learn run's job is a GenerationJob (or None)")
        if self.kind == "edit" and not (isinstance(self.job, EditJob) and type(self.config) is EditConfig):
            raise ValueError("an edit run takes an EditJob and an EditConfig")
        if self.kind == "refine":
            if not (isinstance(self.job, RefineJob) and isinstance(self.config, RefineConfig)):
                raise ValueError("a refine run takes a RefineJob and a RefineConfig")
            if (self.job.image is None) != (self.config.refine.start == "ip-adapter"):
                raise ValueError("a refine run takes an image to refine, or draws it (start ip-adapter), not both")
        self.config = dataclasses.replace(self.config, dtype=resolve_dtype(self.config.dtype, self.config.device))

    @property
    def composed(self) -> bool:
        """Whether the loss is the composed one (`siso.losses.CompositionLoss`): several subjects, or one in a box
        (learn) or one whose region stands for the edit's mask (an edit whose job has no mask of its own); a refine's
        always is (each subject on its region's crop)."""
        if len(self.subjects) > 1 or self.kind == "refine":
            return True
        if self.kind == "edit":
            return self.job.mask is None and self.subjects[0].region is not None
        return self.subjects[0].box is not None
