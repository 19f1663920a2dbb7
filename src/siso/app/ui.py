"""The web page of `siso app`: Gradio tabs over a `siso.app.studio.Studio`.

Learn a subject: upload a photo (or a few of the same subject: the loss averages over them), Start, and every
iteration's image arrives in the "Iterations" gallery with its loss while the run goes on; Stop ends it when the
iteration in progress ends and keeps the best so far. A box puts the subject in its place in the image; a second
subject, with its class and box, joins it there. Generate: prompts with the learned (or an uploaded) subject, or with
saved subjects of the library (several side by side), no optimization. Edit a photo: paint over (or box) an object
and watch the subject take its place, the same way (a second subject too, in its own box). Refine: an image that
already shows the subject (another model's output) gets its identity, the same way, with the similarity to the
subject's photos before and after. Save as (each of those three tabs) keeps the session's last subject in the
library. One run at a time for everyone (the queue shows each visitor their place).
"""

from __future__ import annotations

import gradio as gr

from siso.app.studio import MAX_IMAGES, Studio, UploadError
from siso.app.widgets import (
    advanced,
    box_help,
    live_view,
    page_error,
    paths,
    photos,
    refine_settings,
    save_as,
    show,
    similarity_table,
    start_stop,
)

QUEUE = "model"  # every event that uses the models shares one queue slot
# The train prompt from the class ("a photo of a dog"), and a second subject's ("a photo of a dog and a cat"). A field
# in a closed accordion may not have sent its value yet.
PREFILL = """(...classes) => {
    const [first, ...others] = classes.map((name) => (name || "").trim());
    return first ? [`a photo of a ${first}`, ...others.filter(Boolean).map((name) => `a ${name}`)].join(" and ") : "";
}"""


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
                photo = photos("Subject photos (one, or a few of the same subject)", 280, "subject-photo")
                subject_class = gr.Textbox(label="Subject class", placeholder="e.g. dog")
                side = studio.backbone.resolution
                subject_box = gr.Textbox(
                    label="Subject box (optional)", placeholder="0,0.1,0.5,0.9", info=box_help(side), elem_id="box"
                )
                with gr.Accordion("Second subject (optional)", open=False, elem_id="second"):
                    photo2 = photos("Second subject photos", 200, "subject2-photo")
                    class2 = gr.Textbox(label="Second subject class", placeholder="e.g. cat")
                    box2 = gr.Textbox(
                        label="Second subject box",
                        placeholder="0.5,0.1,1,0.9",
                        info="As the first subject's box (0.5,0,1,1: the right half).",
                        elem_id="box2",
                    )
                prompt = gr.Textbox(label="Train prompt", placeholder="a photo of a dog")
                settings = advanced(optim, "")
                start, stop = start_stop("")
                status = gr.Markdown("Upload a subject photo, then press Start.", elem_id="status")
                learn_save = save_as("")
            with gr.Column(scale=2):
                view = live_view("", "Best image")

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
                saved = gr.CheckboxGroup(
                    label="Or saved subjects (the library): one alone, several side by side",
                    choices=studio.saved_names(),
                    elem_id="library",
                )
                saved_boxes = gr.Textbox(
                    label="Boxes of the saved subjects (optional)",
                    lines=2,
                    placeholder="0,0.1,0.5,0.9\n0.5,0.1,1,0.9",
                    info="One x0,y0,x1,y1 per ticked subject, in the list's order (fractions of the sides, or "
                    "pixels). Empty: side by side, in the list's order.",
                    elem_id="library-boxes",
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
                edit_photo = photos("Subject photos (one, or a few of the same subject)", 200, "edit-subject")
                edit_class = gr.Textbox(label="Subject class", placeholder="e.g. dog", elem_id="edit-class")
                with gr.Accordion("Second subject (optional)", open=False, elem_id="edit-second"):
                    edit_photo2 = photos("Second subject photos", 200, "edit-subject2")
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
                edit_settings = advanced(optim, "edit-")
                edit_start, edit_stop = start_stop("edit-")
                edit_status = gr.Markdown(
                    "Upload the photo and the subject, mark the object, press Start.", elem_id="edit-status"
                )
                edit_save = save_as("edit-")
            with gr.Column(scale=2):
                edit_view = live_view("edit-", "Best edit")

        with gr.Tab("Refine"), gr.Row():
            with gr.Column(scale=1):
                refine_image = gr.ImageEditor(
                    label="Image to refine: one that shows the subject (paint over it: its region)",
                    type="numpy",
                    sources=["upload"],
                    brush=gr.Brush(colors=["#ff3b30"], color_mode="fixed"),
                    height=320,
                    elem_id="refine-image",
                )
                refine_box = gr.Textbox(
                    label="Or a box around the subject: x0,y0,x1,y1 (pixels)",
                    placeholder="40,60,300,380",
                    elem_id="refine-box",
                )
                refine_whole = gr.Checkbox(label="Whole image (the region is all of it)", elem_id="refine-whole")
                refine_photo = photos("Subject photos (one, or a few of the same subject)", 200, "refine-subject")
                refine_class = gr.Textbox(
                    label="Subject class",
                    placeholder="e.g. dog",
                    info="Names it in the prompt; with no paint, box or whole image, it is found in the image by it.",
                    elem_id="refine-class",
                )
                refine_prompt = gr.Textbox(
                    label="Prompt (optional)", placeholder="a photo of a dog (from the class)", elem_id="refine-prompt"
                )
                refine_fields = refine_settings(studio.refine_defaults)
                refine_advanced = advanced(studio.refine_defaults.optim, "refine-")
                refine_start, refine_stop = start_stop("refine-")
                refine_status = gr.Markdown(
                    "Upload the image and the subject, mark the subject, press Start.", elem_id="refine-status"
                )
                refine_save = save_as("refine-")
            with gr.Column(scale=2):
                refine_view = live_view("refine-", "Refined image")
                similarity = gr.Dataframe(
                    similarity_table(None),
                    label="Similarity of the region to the subject's photos (check: a CLIP the loss does not use)",
                    interactive=False,
                    elem_id="refine-similarity",
                )

        def learn(
            photo, subject, box, second, second_class, second_box, train_prompt, iters, rate, run_seed,
            request: gr.Request,
        ):  # fmt: skip
            try:
                for progress in studio.learn(
                    request.session_hash, paths(photo), train_prompt or "", subject or "", iters, rate, run_seed,
                    box or "", paths(second), second_class or "", second_box or "",
                ):  # fmt: skip
                    yield show(progress)
            except Exception as err:  # every failure: one line in the page
                raise page_error(err) from None

        def edit(
            scene, box, photo, subject, second, second_class, second_box, edit_prompt, iters, rate, run_seed,
            request: gr.Request,
        ):  # fmt: skip
            try:
                for progress in studio.edit(
                    request.session_hash, scene, box or "", paths(photo), subject or "", edit_prompt or "", iters,
                    rate, run_seed, paths(second), second_class or "", second_box or "",
                ):  # fmt: skip
                    yield show(progress)
            except Exception as err:
                raise page_error(err) from None

        def refine(
            image, box, photo, subject, whole, text, strength, weight, composite, iters, rate, run_seed,
            request: gr.Request,
        ):  # fmt: skip
            try:
                for progress in studio.refine(
                    request.session_hash, image, box or "", paths(photo), subject or "", whole, text or "", strength,
                    weight, composite, iters, rate, run_seed,
                ):  # fmt: skip
                    yield *show(progress), similarity_table(progress.similarity)
            except Exception as err:
                raise page_error(err) from None

        def halt(request: gr.Request) -> str:
            if studio.stop(request.session_hash):
                return "Stopping: the best iteration so far is kept."
            return "Nothing is running."

        def make_images(text, count, step_count, first_seed, upload, chosen, boxes, request: gr.Request):
            try:
                if chosen and upload:
                    raise UploadError("draw with saved subjects or with an uploaded subject zip, not both")
                if chosen:
                    # In the list's order (by name), whatever order they were ticked in: the boxes' order.
                    chosen = sorted(chosen)
                    return studio.draw_saved(request.session_hash, chosen, text, count, step_count, first_seed, boxes)
                return studio.generate(request.session_hash, text, count, step_count, first_seed, upload)
            except Exception as err:
                raise page_error(err) from None

        def keep(name, overwrite, request: gr.Request):  # Save as, then the library's subjects anew
            try:
                line = studio.save_subject(request.session_hash, name, overwrite)
            except Exception as err:
                raise page_error(err) from None
            return line, gr.CheckboxGroup(choices=studio.saved_names())

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
        refine_start.click(
            refine,
            [refine_image, refine_box, refine_photo, refine_class, refine_whole, refine_prompt, *refine_fields,
             *refine_advanced],
            [*refine_view, refine_status, similarity],
            concurrency_limit=1,
            concurrency_id=QUEUE,
        )  # fmt: skip
        refine_stop.click(halt, None, refine_status, queue=False)
        generate.click(
            make_images,
            [prompts, num_images, steps, gen_seed, subject_zip, saved, saved_boxes],
            images,
            concurrency_limit=1,
            concurrency_id=QUEUE,
        )
        for name, overwrite, button, line in (learn_save, edit_save, refine_save):
            button.click(keep, [name, overwrite], [line, saved], queue=False)
        app.load(lambda: gr.CheckboxGroup(choices=studio.saved_names()), None, saved, queue=False)
        app.unload(closed)
    return app
