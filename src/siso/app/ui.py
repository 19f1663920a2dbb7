"""The web page of `siso app`: Gradio tabs over a `siso.app.studio.Studio`.

Learn a subject: upload a photo (or a few of the same subject: the loss averages over them), Start, and every
iteration's image arrives in the "Iterations" gallery with its loss while the run goes on; Stop ends it when the
iteration in progress ends and keeps the best so far. A box puts the subject in its place in the image; a second
subject, with its class and box, joins it there. Generate: prompts with the learned (or an uploaded) subject, no
optimization. Edit a photo: paint over (or box) an object and watch the subject take its place, the same way (a second
subject too, in its own box). One run at a time for everyone (the queue shows each visitor their place).
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

from siso.app.studio import MAX_IMAGES, MAX_ITERS_LIMIT, Progress, Studio, UploadError
from siso.config import OptimSettings
from siso.config.fields import declared_field
from siso.runs.memory import is_out_of_memory, out_of_memory_message

LOG = logging.getLogger(__name__)
QUEUE = "model"  # every event that uses the models shares one queue slot
# The train prompt from the class ("a photo of a dog"), and a second subject's ("a photo of a dog and a cat"). A field
# in a closed accordion may not have sent its value yet.
PREFILL = """(...classes) => {
    const [first, ...others] = classes.map((name) => (name || "").trim());
    return first ? [`a photo of a ${first}`, ...others.filter(Boolean).map((name) => `a ${name}`)].join(" and ") : "";
}"""


def _box_help(side: int) -> str:
    return (
        f"Where the subject goes in the {side}x{side} px image: x0,y0,x1,y1 in pixels, or in fractions of its "
        "sides when all four are at most 1 (0,0,0.5,1: the left half). Empty: anywhere; with a second subject, "
        "each needs its box."
    )


def _photos(label: str, height: int, elem_id: str) -> gr.Gallery:
    """Where a subject's photos are uploaded: one, or several of the same subject (a gallery shows them all)."""
    return gr.Gallery(
        label=label,
        type="filepath",
        file_types=["image"],
        sources=["upload"],
        interactive=True,
        columns=3,
        height=height,
        elem_id=elem_id,
    )


def _paths(gallery: list[tuple[str, str | None]] | None) -> list[str]:
    """A gallery's value, (file, caption) per photo, as its files (none: nothing uploaded)."""
    return [path for path, _caption in gallery or []]


def _plot(losses: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"iteration": range(len(losses)), "loss": losses})


def _page_error(err: BaseException) -> gr.Error:
    """What the page shows for a failed run: the reason in one line, no stack trace."""
    if isinstance(err, UploadError | ValueError | FileNotFoundError):
        return gr.Error(str(err))
    if is_out_of_memory(err):
        return gr.Error(out_of_memory_message(err))
    LOG.error("siso app: a run failed", exc_info=err)  # the whole story in the server's console
    return gr.Error(f"the run failed: {type(err).__name__}: {err}")


# The `OptimSettings` fields under "Advanced", in the order `Studio.learn` and `Studio.edit` take them; each widget's
# label and bounds are the field's declaration (`siso.config.fields`), its value the model's default.
ADVANCED = ("max_iters", "lr", "seed")
# Bounds of this page's own, tighter than the settings' (a shared server caps the work one run asks for).
PAGE_MAXIMUM = {"max_iters": MAX_ITERS_LIMIT}


def _advanced(optim: OptimSettings, prefix: str) -> list[gr.Number]:
    """The run's settings under "Advanced" (`ADVANCED`), with the CLI's defaults for the model."""
    with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}advanced"):
        widgets = []
        for name in ADVANCED:
            field = declared_field(OptimSettings, name)
            widgets.append(
                gr.Number(
                    label=field.declaration.label,
                    value=getattr(optim, name),
                    precision=0 if field.kind is int else None,
                    minimum=field.declaration.minimum,
                    maximum=PAGE_MAXIMUM.get(name, field.declaration.maximum),
                )
            )
        return widgets


def _start_stop(prefix: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        return gr.Button("Start", variant="primary", elem_id=f"{prefix}start"), gr.Button("Stop", variant="stop")


def _live_view(prefix: str, best_label: str) -> list[gr.components.Component]:
    """What a run shows as it goes and at its end: the iterations, the loss plot, the best image, the subject's LoRA
    and the run folder (in `_show`'s order)."""
    gallery = gr.Gallery(label="Iterations", columns=5, height=360, elem_id=f"{prefix}iterations")
    plot = gr.LinePlot(_plot([]), x="iteration", y="loss", label="Loss", height=200)
    with gr.Row():
        best = gr.Image(label=best_label, type="filepath", interactive=False, height=240, elem_id=f"{prefix}best-image")
        with gr.Column():
            lora_zip = gr.File(label="Subject LoRA", interactive=False, elem_id=f"{prefix}lora-zip")
            run_zip = gr.File(label="Run folder", interactive=False, elem_id=f"{prefix}run-zip")
    return [gallery, plot, best, lora_zip, run_zip]


def _show(progress: Progress) -> tuple:
    """A run's progress for `_live_view`'s components and its status line."""
    return (
        progress.frames,
        _plot(progress.losses),
        progress.best_image,
        progress.lora_zip,
        progress.run_zip,
        progress.message,
    )


def build_app(studio: Studio) -> gr.Blocks:
    """The page; serve it with ``build_app(studio).queue(default_concurrency_limit=1).launch(...)``."""
    optim = studio.defaults.optim
    # No telemetry: Gradio's analytics would call out from a local tool (and their threads, blocked on a network that
    # is not there, would hold the process at exit).
    with gr.Blocks(title="siso", analytics_enabled=False) as app:
        gr.Markdown(
            f"# siso: a subject from one photo\nModel: `{studio.model_name}`. Upload a photo of your subject (a few "
            "photos of it help: three to five, say), press Start, and stop when it looks right."
        )
        with gr.Tab("Learn a subject"), gr.Row():
            with gr.Column(scale=1):
                photo = _photos("Subject photos (one, or a few of the same subject)", 280, "subject-photo")
                subject_class = gr.Textbox(label="Subject class", placeholder="e.g. dog")
                side = studio.backbone.resolution
                subject_box = gr.Textbox(
                    label="Subject box (optional)", placeholder="0,0.1,0.5,0.9", info=_box_help(side), elem_id="box"
                )
                with gr.Accordion("Second subject (optional)", open=False, elem_id="second"):
                    photo2 = _photos("Second subject photos", 200, "subject2-photo")
                    class2 = gr.Textbox(label="Second subject class", placeholder="e.g. cat")
                    box2 = gr.Textbox(
                        label="Second subject box",
                        placeholder="0.5,0.1,1,0.9",
                        info="As the first subject's box (0.5,0,1,1: the right half).",
                        elem_id="box2",
                    )
                prompt = gr.Textbox(label="Train prompt", placeholder="a photo of a dog")
                settings = _advanced(optim, "")
                start, stop = _start_stop("")
                status = gr.Markdown("Upload a subject photo, then press Start.", elem_id="status")
            with gr.Column(scale=2):
                view = _live_view("", "Best image")

        with gr.Tab("Generate"), gr.Row():
            with gr.Column(scale=1):
                prompts = gr.Textbox(label="Prompts (one per line)", lines=4, placeholder="a photo of a dog on a beach")
                num_images = gr.Number(label="Number of images", value=1, precision=0, minimum=1, maximum=MAX_IMAGES)
                steps = gr.Number(label="Steps", value=optim.num_inference_steps, precision=0, minimum=1)
                gen_seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                subject_zip = gr.File(
                    label="Subject zip (optional: else the subject learned here)",
                    file_types=[".zip"],
                    type="filepath",
                )
                generate = gr.Button("Generate", variant="primary")
            with gr.Column(scale=2):
                images = gr.Gallery(label="Images", columns=3, height=480, elem_id="images")

        with gr.Tab("Edit a photo"), gr.Row():
            with gr.Column(scale=1):
                scene = gr.ImageEditor(
                    label="Photo to edit (paint over the object to replace)",
                    type="numpy",
                    sources=["upload"],
                    brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"),
                    height=320,
                    elem_id="scene",
                )
                box = gr.Textbox(label="Or a box around the object: x0,y0,x1,y1 (pixels)", placeholder="40,60,300,380")
                edit_photo = _photos("Subject photos (one, or a few of the same subject)", 200, "edit-subject")
                edit_class = gr.Textbox(label="Subject class", placeholder="e.g. dog", elem_id="edit-class")
                with gr.Accordion("Second subject (optional)", open=False, elem_id="edit-second"):
                    edit_photo2 = _photos("Second subject photos", 200, "edit-subject2")
                    edit_class2 = gr.Textbox(
                        label="Second subject class", placeholder="e.g. cat", elem_id="edit-class2"
                    )
                    edit_box2 = gr.Textbox(
                        label="Second subject box",
                        placeholder="300,60,560,380",
                        info="Where the second subject goes: x0,y0,x1,y1 in pixels of the photo to edit. The first "
                        "goes where you painted (or in its box); the photo is kept outside both.",
                        elem_id="edit-box2",
                    )
                edit_prompt = gr.Textbox(label="Edit prompt", placeholder="a photo of a dog")
                edit_settings = _advanced(optim, "edit-")
                edit_start, edit_stop = _start_stop("edit-")
                edit_status = gr.Markdown(
                    "Upload the photo and the subject, mark the object, press Start.", elem_id="edit-status"
                )
            with gr.Column(scale=2):
                edit_view = _live_view("edit-", "Best edit")

        def learn(
            photo, subject, box, second, second_class, second_box, train_prompt, iters, rate, run_seed,
            request: gr.Request,
        ):  # fmt: skip
            try:
                for progress in studio.learn(
                    request.session_hash, _paths(photo), train_prompt or "", subject or "", iters, rate, run_seed,
                    box or "", _paths(second), second_class or "", second_box or "",
                ):  # fmt: skip
                    yield _show(progress)
            except Exception as err:  # every failure: one line in the page
                raise _page_error(err) from None

        def edit(
            scene, box, photo, subject, second, second_class, second_box, edit_prompt, iters, rate, run_seed,
            request: gr.Request,
        ):  # fmt: skip
            try:
                for progress in studio.edit(
                    request.session_hash, scene, box or "", _paths(photo), subject or "", edit_prompt or "", iters,
                    rate, run_seed, _paths(second), second_class or "", second_box or "",
                ):  # fmt: skip
                    yield _show(progress)
            except Exception as err:
                raise _page_error(err) from None

        def halt(request: gr.Request) -> str:
            if studio.stop(request.session_hash):
                return "Stopping: the best iteration so far is kept."
            return "Nothing is running."

        def make_images(text, count, step_count, first_seed, upload, request: gr.Request):
            try:
                return studio.generate(request.session_hash, text, count, step_count, first_seed, upload)
            except Exception as err:
                raise _page_error(err) from None

        def closed(request: gr.Request) -> None:  # the tab closed or reloaded: end its run, free the model
            studio.stop(request.session_hash)

        # In the browser, keystroke by keystroke (server round trips could arrive out of order).
        for typed in (subject_class, class2):
            typed.input(None, [subject_class, class2], prompt, js=PREFILL)
        start.click(
            learn,
            [photo, subject_class, subject_box, photo2, class2, box2, prompt, *settings],
            [*view, status],
            concurrency_limit=1,
            concurrency_id=QUEUE,
        )
        stop.click(halt, None, status, queue=False)
        for typed in (edit_class, edit_class2):
            typed.input(None, [edit_class, edit_class2], edit_prompt, js=PREFILL)
        edit_start.click(
            edit,
            [scene, box, edit_photo, edit_class, edit_photo2, edit_class2, edit_box2, edit_prompt, *edit_settings],
            [*edit_view, edit_status],
            concurrency_limit=1,
            concurrency_id=QUEUE,
        )
        edit_stop.click(halt, None, edit_status, queue=False)
        generate.click(
            make_images,
            [prompts, num_images, steps, gen_seed, subject_zip],
            images,
            concurrency_limit=1,
            concurrency_id=QUEUE,
        )
        app.unload(closed)
    return app
