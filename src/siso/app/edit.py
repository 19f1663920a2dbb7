"""The Edit tab's request: the photo, where the object is in it, the subjects and the page's settings, checked and
described as an ``edit`` `siso.runs.spec.RunSpec` (its folder is given when it runs, `siso.app.studio.Studio.edit`)."""

from __future__ import annotations

from siso.app.settings import AppSettings
from siso.app.uploads import Photos, UploadError, edit_subjects, run_config, scene_and_mask, train_prompt_for
from siso.backbones import check_can_edit
from siso.config import EditConfig, OptimSettings
from siso.runs.jobs import EditJob
from siso.runs.spec import RunSpec


def edit_spec(
    settings: AppSettings,
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
) -> RunSpec:
    """The edit the Edit tab asks for, with no run folder yet.

    Args:
        settings: The app's settings.
        scene: The photo and what was painted on it, as Gradio's image editor gives them (``background``: the
            photo, ``layers``: RGBA paint; painted pixels are the object), in numpy arrays.
        box: Instead of paint: ``x0,y0,x1,y1`` around the object, in the photo's pixels.
        subject_path: The subject's photo file, or several photos of the same subject.
        subject_class, prompt: The subject's class, and the edit prompt ("a photo of a {class}" when empty).
        max_iters, lr, seed: The page's "Advanced" settings.
        second_path, second_class, second_box: A second subject's photo (or photos), class and region (a box
            ``x0,y0,x1,y1`` in the photo's pixels), all three needed; the first subject goes where the paint (or
            ``box``) is, and the photo is kept outside both regions.

    Raises:
        UploadError: no photo, no mask (nothing painted, no box), a bad box, a second subject without its class
            or box, or a model that cannot edit.
    """
    try:
        check_can_edit(settings.model)
    except ValueError as err:
        raise UploadError(str(err)) from None
    photo, mask, source = scene_and_mask(scene, box, settings)
    subjects = edit_subjects(subject_path, subject_class, mask, second_path, second_class, second_box, settings, photo)
    edit_prompt = train_prompt_for(prompt, *(subject.class_name or "" for subject in subjects))
    # EditConfig's schedule (4 steps, cut by the strength), as `siso edit`.
    config = run_config(settings, EditConfig, edit_prompt, max_iters, lr, seed)
    if len(subjects) == 1:
        job = EditJob(photo, mask, source, subject_class=subjects[0].class_name, prompt=edit_prompt)
        return RunSpec("edit", config, None, subjects, job, paths={"subject": subjects[0].path})
    job = EditJob(photo, None, f"{source}; box {second_box.strip()}", prompt=edit_prompt)
    return RunSpec("edit", config, None, subjects, job)
