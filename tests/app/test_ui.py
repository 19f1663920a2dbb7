"""The page's widgets (`siso.app.ui`) that are derived from the settings' declarations (`siso.config.fields`)."""

import gradio as gr
import pytest

from siso.app.settings import MAX_ITERS_LIMIT
from siso.app.ui import _advanced
from siso.app.uploads import UploadError
from siso.config import SEED_MAX, OptimSettings


def test_the_advanced_panel_takes_label_bounds_and_value_from_the_declarations():
    optim = OptimSettings(lr=2e-4, max_iters=20, seed=3)  # a family's defaults, say
    with gr.Blocks():
        widgets = _advanced(optim, "edit-")
    shown = [(w.label, w.value, w.precision, w.minimum, w.maximum) for w in widgets]
    assert shown == [
        ("Max iterations", 20, 0, 1, MAX_ITERS_LIMIT),  # the page's own cap, under the setting's
        ("Learning rate", 2e-4, None, 0, None),
        ("Seed", 3, 0, 0, SEED_MAX),
    ]


def test_page_errors_are_one_line(caplog):
    """What the page shows for a failure: the reason, no stack trace (an unexpected one is logged in full)."""
    pytest.importorskip("gradio")
    from siso.app.ui import _page_error

    assert _page_error(UploadError("upload a subject photo first")).message == "upload a subject photo first"
    out_of_memory = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
    assert _page_error(out_of_memory).message.startswith("out of memory on the CPU; to use less, try")
    with caplog.at_level("ERROR"):
        assert _page_error(KeyError("x")).message == "the run failed: KeyError: 'x'"
    assert "a run failed" in caplog.text
