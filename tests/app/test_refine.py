"""`siso.app.refine` and `Studio.refine`: the Refine tab's request becomes a ``refine`` run of `siso.runs.run.run` on
the studio's models, streamed like the other tabs' runs, with the similarity before and after at its end; bad input
is one line for the page and writes nothing."""

import json
import re

import numpy as np
import pytest
import tiny
from PIL import Image

from siso.app.refine import PAGE_REGION_OPTIONS, page_message, refine_spec
from siso.app.studio import UploadError
from siso.config import REFINE_STRENGTH, RefineConfig
from siso.runs.folder import RunFolder
from siso.runs.jobs import REGION_OPTIONS, RefineJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.vision.masks import MaskError

BOX = "40,30,90,70"


def _image(subject: Image.Image, painted: bool) -> dict:
    """An image that shows the subject (at x 40..90, y 30..70) as Gradio's image editor gives it: the image, and an
    RGBA paint layer (painted: over the subject)."""
    yy, xx = np.mgrid[0:96, 0:128]
    image = np.stack([xx * 2, yy * 2, 255 - xx], axis=-1).astype(np.uint8)
    image[30:70, 40:90] = np.asarray(subject.resize((50, 40)))
    layer = np.zeros((96, 128, 4), dtype=np.uint8)
    if painted:
        layer[30:70, 40:90] = (255, 59, 48, 255)
    return {"background": image, "layers": [layer], "composite": image}


def _folder(studio, session: str):
    (folder,) = (studio.root / session).glob("refine-*")
    return folder, json.loads((folder / "config.json").read_text()), json.loads((folder / "metrics.json").read_text())


def test_refine_a_box_streams_and_shows_the_similarity_before_and_after(studio, subject, subject_path):
    image = _image(subject, painted=False)
    progress = list(studio.refine("refiner", image, BOX, subject_path, "dog", composite=True, max_iters=2))
    assert [p.running for p in progress] == [True, True, False]
    assert all(p.similarity is None for p in progress[:-1])  # the table comes at the end
    final = progress[-1]
    assert final.message.startswith("Done: max iterations reached after 2 iterations") and final.lora_zip
    assert final.message.endswith("; subject: 1 photo")
    folder, config, metrics = _folder(studio, "refiner")
    assert final.best_image == str(folder / "best.png")
    assert Image.open(final.best_image).size == (128, 96)  # the refined image at the given image's size
    assert (folder / "best_uncomposited.png").is_file()  # composited, as asked
    assert config["image"] == "input.png" and config["prompt"] == "a photo of a dog"
    assert [(s["photo"], s["class"], s["region"]) for s in config["subjects"]] == [("subject.png", "dog", f"box {BOX}")]
    assert config["siso"]["edit"]["strength"] == REFINE_STRENGTH and config["siso"]["edit"]["composite"] is True
    assert config["siso"]["refine"]["check_model"] == studio.settings.check_model
    # metrics.json's before and after, per subject term and network, as the page's table shows them.
    assert final.similarity == [
        ("dog", network, metrics["before"]["dog"][network], metrics["after"]["dog"][network])
        for network in ("dino", "ir", "check")
    ]


def test_refine_a_painted_region_with_the_page_settings(studio, subject, subject_path):
    fields = {"prompt": "a photo of sks", "strength": 0.75, "structure_weight": 0.0, "max_iters": 1, "seed": 3}
    final = list(studio.refine("painter", _image(subject, painted=True), "", subject_path, **fields))[-1]
    assert not final.running and final.similarity
    folder, config, metrics = _folder(studio, "painter")
    assert config["prompt"] == "a photo of sks" and config["subjects"][0]["region"] == "painted in the app"
    siso = config["siso"]
    assert (siso["edit"]["strength"], siso["refine"]["structure_weight"], siso["optim"]["seed"]) == (0.75, 0.0, 3)
    assert siso["edit"]["composite"] is False and not (folder / "best_uncomposited.png").exists()
    assert "structure" not in metrics["iterations"][0]  # weight 0: no structure term
    mask = np.asarray(Image.open(folder / "mask.png").convert("L")) > 127
    assert mask[50, 65] and not mask[5, 5]  # the painted region (grown a little), not the rest


def test_refine_the_whole_image(studio, subject, subject_path):
    final = list(studio.refine("whole", _image(subject, False), "", subject_path, "dog", whole=True, max_iters=1))[-1]
    _, config, metrics = _folder(studio, "whole")
    assert config["subjects"][0]["region"] == "all" and metrics["best_background_mse"] is None
    assert [row[:2] for row in final.similarity] == [("dog", "dino"), ("dog", "ir"), ("dog", "check")]


def test_refine_finds_the_subject_by_its_class(studio, scene_photo, subject_path, tmp_path, monkeypatch):
    monkeypatch.setattr(studio.settings, "detector", str(tiny.make_grounding_dino(tmp_path / "gd")))
    monkeypatch.setattr(studio.settings, "segmenter", str(tiny.make_sam(tmp_path / "sam")))
    # The tiny random detector finds a "dog" in part of this image (`siso edit`'s detection test finds it there too).
    image = {"background": np.asarray(scene_photo), "layers": []}
    final = list(studio.refine("finder", image, "", subject_path, "dog", max_iters=1))[-1]
    folder, config, _ = _folder(studio, "finder")
    assert config["subjects"][0]["region"] == "detected dog" and final.similarity
    mask = np.asarray(Image.open(folder / "mask.png").convert("L")) > 127
    assert 0 < mask.sum() < mask.size


def test_the_app_runs_the_refine_that_its_spec_describes(studio, subject, subject_path, tmp_path):
    """The app's refine is `siso.runs.run.run` of the spec `refine_spec` builds: run on its own, the same terms."""
    image = _image(subject, painted=False)
    list(studio.refine("same", image, BOX, subject_path, "dog", max_iters=1))
    _, _, metrics = _folder(studio, "same")
    spec = refine_spec(studio.settings, image, BOX, subject_path, "dog", max_iters=1)
    assert spec.kind == "refine" and isinstance(spec.config, RefineConfig) and isinstance(spec.job, RefineJob)
    assert spec.out is None and spec.subjects[0].region[50, 65] and not spec.subjects[0].region[5, 5]
    studio._unload()
    spec.out = RunFolder(tmp_path / "own")
    own = run(spec, Models(studio.backbone), progress=False)
    terms = {key: value for key, value in metrics["iterations"][0].items() if key != "seconds"}
    assert {key: own["iterations"][0][key] for key in terms} == pytest.approx(terms, rel=1e-5)
    assert own["before"]["dog"] == pytest.approx(metrics["before"]["dog"], rel=1e-5)


def test_bad_requests_are_one_line_and_write_nothing(studio, subject, subject_path):
    request = {"image": _image(subject, False), "box": BOX, "subject_path": subject_path, "subject_class": "dog"}
    small = {"background": np.zeros((20, 20, 3), dtype=np.uint8), "layers": []}
    refusals = {
        "upload the image to refine first": {"image": None},
        "the image to refine is 20x20 px; at least": {"image": small},
        "upload a subject photo first": {"subject_path": None},
        # Nothing painted (or a paint layer left empty), no box, no class to find, not the whole image.
        f"mark the subject in the image: {PAGE_REGION_OPTIONS}, or type its class to find it": {
            "box": " ",
            "subject_class": "",
        },
        '"Whole image" refines all of it: clear the paint and the box': {
            "image": _image(subject, True),
            "box": "",
            "whole": True,
        },
        "box '1,2,3' is not 4 numbers": {"box": "1,2,3"},
        "reaches outside the 128x96 photo": {"box": "40,30,200,70"},
        "strength must be in (0, 1], got 1.5": {"strength": 1.5},
        "structure_weight must be a finite number >= 0": {"structure_weight": -1},
        "max iterations must be 1 to 1000, got 0": {"max_iters": 0},
    }
    for message, fields in refusals.items():
        with pytest.raises(UploadError, match=re.escape(message)):
            next(studio.refine("refusals", **{**request, **fields}))
    assert not (studio.root / "refusals").exists()


def test_a_subject_not_found_is_told_in_the_page_terms():
    err = page_message(MaskError(f"no 'dog' was found in the image to refine: {REGION_OPTIONS}"))
    assert isinstance(err, UploadError)
    assert str(err) == f"no 'dog' was found in the image to refine: {PAGE_REGION_OPTIONS}"
