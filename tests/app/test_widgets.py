"""The page's widgets (`siso.app.widgets`) that are derived from the settings' declarations (`siso.config.fields`)."""

import gradio as gr
import pytest

from siso.app.settings import MAX_ITERS_LIMIT
from siso.app.uploads import UploadError
from siso.app.widgets import advanced, refine_settings, similarity_table
from siso.config import SEED_MAX, EditSettings, OptimSettings, RefineConfig, RefineSettings


def test_the_advanced_panel_takes_label_bounds_and_value_from_the_declarations():
    optim = OptimSettings(lr=2e-4, max_iters=20, seed=3)  # a family's defaults, say
    with gr.Blocks():
        widgets = advanced(optim, "edit-")
    shown = [(w.label, w.value, w.precision, w.minimum, w.maximum) for w in widgets]
    assert shown == [
        ("Max iterations", 20, 0, 1, MAX_ITERS_LIMIT),  # the page's own cap, under the setting's
        ("Learning rate", 2e-4, None, 0, None),
        ("Seed", 3, 0, 0, SEED_MAX),
    ]


def test_the_refine_settings_take_label_bounds_value_and_help_from_the_declarations():
    config = RefineConfig(edit=EditSettings(strength=0.4), refine=RefineSettings(structure_weight=2.0))  # a model's
    with gr.Blocks():
        strength, structure, composite = refine_settings(config)
    shown = [(w.label, w.value, w.minimum, w.maximum, w.info) for w in (strength, structure)]
    assert shown == [
        ("Strength", 0.4, 0.05, 1, "share of the steps redone, in (0, 1] (0.4)"),  # the help says this default
        (
            "Structure weight",
            2.0,
            0,
            None,
            "weight of the structure term: DINOv2 patch self-similarity inside the region kept as the input's (2; "
            "0: off)",
        ),
    ]
    assert isinstance(composite, gr.Checkbox) and composite.label == "Composite" and composite.value is False
    assert composite.info == "paste the input back outside the (feathered) mask in best.png"


def test_the_similarity_table_rounds_and_gives_the_change():
    table = similarity_table([("dog", "dino", 0.51234, 0.61239), ("dog", "check", 0.25, 0.2)])
    assert table.to_dict("records") == [
        {"subject": "dog", "network": "dino", "before": 0.5123, "after": 0.6124, "change": 0.1},
        {"subject": "dog", "network": "check", "before": 0.25, "after": 0.2, "change": -0.05},
    ]
    assert list(similarity_table(None).columns) == ["subject", "network", "before", "after", "change"]


def test_page_errors_are_one_line(caplog):
    """What the page shows for a failure: the reason, no stack trace (an unexpected one is logged in full)."""
    pytest.importorskip("gradio")
    from siso.app.widgets import page_error

    assert page_error(UploadError("upload a subject photo first")).message == "upload a subject photo first"
    out_of_memory = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    assert page_error(out_of_memory).message.startswith("out of memory on the CPU; to use less, try")
    with caplog.at_level("ERROR"):
        assert page_error(KeyError("x")).message == "the run failed: KeyError: 'x'"
    assert "a run failed" in caplog.text
