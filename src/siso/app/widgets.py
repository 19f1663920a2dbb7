"""The parts of the `siso app` page that its tabs share: subject photo galleries, the settings panels derived from the
settings' declarations (`siso.config.fields`), Start and Stop, the live view of a run, and one-line errors."""

from __future__ import annotations

import dataclasses
import logging

import gradio as gr
import pandas as pd

from siso.app.studio import MAX_ITERS_LIMIT, Progress, UploadError
from siso.config import OptimSettings, RefineConfig
from siso.config.fields import declared, declared_field
from siso.runs.memory import is_out_of_memory, out_of_memory_message

LOG = logging.getLogger(__name__)


def box_help(side: int) -> str:
    """The help of the Learn tab's "Subject box" for a ``side`` px image."""
    return (
        f"Where the subject goes in the {side}x{side} px image: x0,y0,x1,y1 in pixels, or in fractions of its "
        "sides when all four are at most 1 (0,0,0.5,1: the left half). Empty: anywhere; with a second subject, "
        "each needs its box."
    )


def photos(label: str, height: int, elem_id: str) -> gr.Gallery:
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


def paths(gallery: list[tuple[str, str | None]] | None) -> list[str]:
    """A gallery's value, (file, caption) per photo, as its files (none: nothing uploaded)."""
    return [path for path, _caption in gallery or []]


def loss_table(losses: list[float]) -> pd.DataFrame:
    """The losses so far, as the loss plot takes them."""
    return pd.DataFrame({"iteration": range(len(losses)), "loss": losses})


def page_error(err: BaseException) -> gr.Error:
    """What the page shows for a failed run: the reason in one line, no stack trace."""
    if isinstance(err, UploadError | ValueError | FileNotFoundError):
        return gr.Error(str(err))
    if is_out_of_memory(err):
        return gr.Error(out_of_memory_message(err))
    LOG.error("siso app: a run failed", exc_info=err)  # the whole story in the server's console
    return gr.Error(f"the run failed: {type(err).__name__}: {err}")


# The `OptimSettings` fields under "Advanced", in the order `Studio.learn`, `Studio.edit` and `Studio.refine` take
# them; each widget's label and bounds are the field's declaration (`siso.config.fields`), its value the model's
# default.
ADVANCED = ("max_iters", "lr", "seed")
# Bounds of this page's own, tighter than the settings' (a shared server caps the work one run asks for).
PAGE_MAXIMUM = {"max_iters": MAX_ITERS_LIMIT}


def advanced(optim: OptimSettings, prefix: str) -> list[gr.Number]:
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


# The refine's own settings on its tab, as (group, field) of `RefineConfig`, in the order `Studio.refine` takes them;
# each widget from its declaration, as under "Advanced".
REFINE = (("edit", "strength"), ("refine", "structure_weight"), ("edit", "composite"))


def refine_settings(config: RefineConfig) -> list[gr.components.Component]:
    """The refine's settings (`REFINE`) with the model's defaults, their help from the declarations."""
    widgets = []
    with gr.Accordion("Refine settings", open=True, elem_id="refine-settings"):
        for group, name in REFINE:
            settings = getattr(config, group)
            # Declared with this run's defaults, so the help says them (a refine's strength is not an edit's).
            (field,) = [f for f in declared(type(settings), dataclasses.asdict(settings)) if f.name == name]
            label = field.declaration.label or name.replace("_", " ").capitalize()
            if field.kind is bool:
                widgets.append(gr.Checkbox(label=label, value=field.default, info=field.help, elem_id=f"refine-{name}"))
                continue
            widgets.append(
                gr.Number(
                    label=label,
                    value=field.default,
                    info=field.help,
                    minimum=field.declaration.minimum,
                    maximum=field.declaration.maximum,
                    elem_id=f"refine-{name}",
                )
            )
    return widgets


def similarity_table(rows: list[tuple[str, str, float, float]] | None) -> pd.DataFrame:
    """A refine's `Progress.similarity` as the page's table, to 4 decimals as the status line's losses, with the
    change (empty while it runs)."""
    table = pd.DataFrame(rows or [], columns=["subject", "network", "before", "after"])
    table["change"] = table["after"] - table["before"]
    return table.round(4)


def start_stop(prefix: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id=f"{prefix}start")
        return start, gr.Button("Stop", variant="stop", elem_id=f"{prefix}stop")


def live_view(prefix: str, best_label: str) -> list[gr.components.Component]:
    """What a run shows as it goes and at its end: the iterations, the loss plot, the best image, the subject's LoRA
    and the run folder (in `show`'s order)."""
    gallery = gr.Gallery(label="Iterations", columns=5, height=360, elem_id=f"{prefix}iterations")
    plot = gr.LinePlot(loss_table([]), x="iteration", y="loss", label="Loss", height=200)
    with gr.Row():
        best = gr.Image(label=best_label, type="filepath", interactive=False, height=240, elem_id=f"{prefix}best-image")
        with gr.Column():
            lora_zip = gr.File(label="Subject LoRA", interactive=False, elem_id=f"{prefix}lora-zip")
            run_zip = gr.File(label="Run folder", interactive=False, elem_id=f"{prefix}run-zip")
    return [gallery, plot, best, lora_zip, run_zip]


def show(progress: Progress) -> tuple:
    """A run's progress for `live_view`'s components and its status line."""
    return (
        progress.frames,
        loss_table(progress.losses),
        progress.best_image,
        progress.lora_zip,
        progress.run_zip,
        progress.message,
    )


def save_as(prefix: str) -> tuple[gr.Textbox, gr.Checkbox, gr.Button, gr.Markdown]:
    """Save as: a name, Overwrite, the button, and the line that says where the subject went."""
    with gr.Row(equal_height=True):
        name = gr.Textbox(
            label="Save the subject in the library as", placeholder="e.g. my-dog", elem_id=f"{prefix}save-name", scale=3
        )
        overwrite = gr.Checkbox(label="Overwrite", elem_id=f"{prefix}save-overwrite", scale=1, min_width=100)
        button = gr.Button("Save as", elem_id=f"{prefix}save", scale=1, min_width=100)
    return name, overwrite, button, gr.Markdown("", elem_id=f"{prefix}saved")
