"""Evaluation fixtures: a small DreamBench, an ImagenHub editing export with masks, and tiny metric networks."""

from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from siso.eval.lpips import LPIPS
from siso.eval.suites import export_imagenhub_editing

from .helpers import PROMPTS_AND_CLASSES, _photo


@pytest.fixture
def dreambench(tmp_path) -> Path:
    dataset = tmp_path / "dreambooth" / "dataset"
    for seed, subject in enumerate(["dog", "red_teapot"]):
        (dataset / subject).mkdir(parents=True)
        _photo(seed).save(dataset / subject / "00.jpg")
    _photo(9).save(dataset / "dog" / "01.jpg")
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    return tmp_path / "dreambooth"


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-models")
    clip = str(tiny.make_clip(root / "clip"))
    return {
        "dino": str(tiny.make_dino_v1(root / "dino-v1")),
        "dinov2": str(tiny.make_dino(root / "dinov2")),
        "clip_i": clip,
        "ir": clip,
        "clip_t": clip,
    }


@pytest.fixture
def editing_suite(tmp_path) -> Path:
    concepts = [{"subject": "duck_toy", "image": _photo(1)}, {"subject": "duck_toy", "image": _photo(2)}]
    rows = [
        {"uid": 3, "subject": "duck_toy", "image": _photo(20, size=(96, 80))},
        {"uid": 4, "subject": "duck_toy", "image": _photo(21, size=(64, 64))},
    ]
    root = export_imagenhub_editing(rows, concepts, tmp_path / "editing")
    (root / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[:24, :24] = 255  # the "subject" sits in the top-left corner
    for uid in (3, 4):
        Image.fromarray(mask).save(root / "masks" / f"{uid}.png")
    return root


@pytest.fixture
def lpips_weights(tmp_path) -> Path:
    folder = tmp_path / "lpips"
    folder.mkdir()
    torch.manual_seed(0)
    model = LPIPS()
    torch.save(model.trunk.state_dict(), folder / "alexnet-owt-7be5be79.pth")
    torch.save(model.heads.state_dict(), folder / "alex.pth")
    return folder


@pytest.fixture
def edit_masks(editing_suite, tmp_path) -> dict[str, Path]:
    """Item 3 (96x80) loses its mask file, so its object is detected; item 4 (64x64) keeps its file."""
    (editing_suite / "masks" / "3.png").unlink()
    return {"detector": tiny.make_grounding_dino(tmp_path / "gd"), "segmenter": tiny.make_sam(tmp_path / "sam")}
