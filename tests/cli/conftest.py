"""Command-line fixtures: a ``siso generate`` command line on the tiny models, and the editing and evaluation
fixtures the ``siso edit`` and ``siso eval`` tests share with tests/editing and tests/eval."""

import pytest

from ..editing.conftest import detection_dirs, scene_photo  # noqa: F401
from ..eval.conftest import dreambench, editing_suite, eval_models  # noqa: F401


@pytest.fixture
def base_args(model_dirs, subject_path, similarity_args):
    return [
        "generate",
        "--subject",
        str(subject_path),
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--lr",
        "1e-2",
    ]
