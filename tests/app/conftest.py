"""App fixtures: a `Studio` on the tiny models (one per test module), two photos of one subject, and editing's scene
photo (in which the tiny detector finds a "dog")."""

from pathlib import Path

import pytest
from PIL import Image

from siso.app.studio import AppSettings, Studio
from siso.config import SimilaritySettings

from ..editing.conftest import scene_photo  # noqa: F401


@pytest.fixture(scope="module")
def studio(model_dirs, tmp_path_factory):
    settings = AppSettings(
        model=str(model_dirs["sd"]),
        root=tmp_path_factory.mktemp("app-runs"),
        device="cpu",
        similarity=SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"])),
        optim={"patience": 1000, "min_improvement": 0.0},  # runs end when the test says (or at max iterations)
        check_model=str(model_dirs["clip"]),  # a refine's check network
    )
    return Studio(settings)


@pytest.fixture
def album(subject, tmp_path) -> list[Path]:
    """Two photos of the subject: as it is, and mirrored."""
    front, side = tmp_path / "front.png", tmp_path / "side.png"
    subject.save(front)
    subject.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(side)
    return [front, side]
