"""Shared fixtures: tiny real models built once per session, offline, and a subject photo."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network
if "PYTEST_XDIST_WORKER" in os.environ:
    # One test process per core (`make test`): each, and the commands its tests start, computes on one thread;
    # tiny models on two threads of a busy core run many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from siso import OptimSettings, SimilaritySettings, SisoConfig


@pytest.fixture(autouse=True)
def _library_in_tmp(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's library of saved subjects (`siso.library.default_root`)."""
    monkeypatch.setenv("SISO_LIBRARY", str(tmp_path_factory.getbasetemp() / "default-library"))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): on tiny
    models thread hand-off costs more than the arithmetic, and on a busy 2-core machine two threads can make them many
    times slower (the launcher's processes use one too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    # Built once per session: building them all takes well under a second.
    root = tmp_path_factory.mktemp("tiny")
    return {
        "sd": tiny.make_sd_turbo(root / "sd-turbo"),
        "sdxl": tiny.make_sdxl_turbo(root / "sdxl-turbo"),
        "flux": tiny.make_flux_schnell(root / "flux-schnell"),
        "sana": tiny.make_sana(root / "sana"),
        "dino": tiny.make_dino(root / "dino"),
        "clip": tiny.make_clip_vision(root / "clip-vision"),
    }


@pytest.fixture(scope="session")
def similarity_args(model_dirs) -> list[str]:
    """Command-line options that point the loss at the tiny similarity networks."""
    return ["--dino-model", str(model_dirs["dino"]), "--ir-model", str(model_dirs["clip"]), "--dino-resolution", "28"]


@pytest.fixture(scope="session")
def subject() -> Image.Image:
    """A 96x72 photo-like image: smooth colour gradients plus a bright disc (the "subject")."""
    yy, xx = np.mgrid[0:72, 0:96]
    img = np.stack([xx * 2.6, yy * 3.4, 255 - xx * 1.3], axis=-1)
    img[(xx - 48) ** 2 + (yy - 36) ** 2 < 340] = (250, 220, 40)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def subject_path(subject, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("subject") / "subject.png"
    subject.save(path)
    return path


@pytest.fixture
def make_config(model_dirs):
    """SisoConfig for a tiny backbone ("sd", "sdxl", "flux" or "sana") and the tiny similarity networks."""

    def make(family: str = "sd", **optim) -> SisoConfig:
        optim = {"lr": 1e-2, "max_iters": 4, **optim}
        return SisoConfig(
            model=str(model_dirs[family]),
            train_prompt="a photo of a dog",
            similarity=SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"])),
            optim=OptimSettings(**optim),
        )

    return make
