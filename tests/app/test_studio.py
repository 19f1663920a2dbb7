"""`siso.app.studio`: the app's work without a browser: learning, generating and editing streamed, stopped, and on
networks loaded once."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siso.app.studio import UploadError
from siso.app.uploads import learn_subjects
from siso.config import SisoConfig
from siso.losses import SimilarityLoss
from siso.losses.networks import LossNetworks
from siso.runs.folder import RunFolder
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec


def _learn(studio, session, subject_path, **kwargs):
    return list(studio.learn(session, subject_path, "a photo of a dog", **{"max_iters": 3, **kwargs}))


@pytest.fixture
def built(monkeypatch) -> list:
    """Every loss a run builds (`LossNetworks.loss`), in order."""
    losses = []
    original = LossNetworks.loss

    def loss(self, *args, **kwargs):
        losses.append(original(self, *args, **kwargs))
        return losses[-1]

    monkeypatch.setattr(LossNetworks, "loss", loss)
    return losses


def _learned_from(loss, photos: list[Path]) -> None:
    """The run's loss holds one reference per photo, in order, each as the loss of that photo alone holds it."""
    for k, path in enumerate(photos):
        alone = SimilarityLoss(dict(loss.nets), Image.open(path).convert("RGB"), loss.weights)
        for name, references in loss.references.items():
            assert references.shape[0] == len(photos)
            torch.testing.assert_close(references[k], alone.references[name][0])


def test_learn_two_subjects_in_their_boxes(studio, subject_path, subject, tmp_path):
    side = studio.backbone.resolution
    second = tmp_path / "cat.png"
    subject.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    half = side // 2
    fields = {"box": "0,0,0.5,1", "second_path": second, "second_class": "cat", "second_box": f"{half},0,{side},{side}"}
    progress = list(studio.learn("pair", subject_path, "", "dog", max_iters=2, **fields))
    # Each subject's identity term, streamed and at the end.
    assert "; identity: dog " in progress[0].message and ", cat " in progress[0].message
    assert "; identity: dog " in progress[-1].message and progress[-1].lora_zip
    (folder,) = (studio.root / "pair").glob("learn-*")
    config = json.loads((folder / "config.json").read_text())
    assert config["siso"]["train_prompt"] == "a photo of a dog and a cat"
    boxes = [(s["photo"], s["class"], s["box_pixels"], s["term"]) for s in config["subjects"]]
    assert boxes == [
        ("subject.png", "dog", [0, 0, half, side], "dog"),
        ("cat.png", "cat", [half, 0, side, side], "cat"),
    ]
    iterations = json.loads((folder / "metrics.json").read_text())["iterations"]
    assert {"identity/dog", "identity/cat", "leakage"} <= set(iterations[0])
    # The app's loss (on the networks it loaded once) is the one a run of these subjects builds on its own.
    studio._unload()
    config = studio._config(SisoConfig, "a photo of a dog and a cat", 1, None, 0)
    subjects = learn_subjects(subject_path, "dog", *fields.values(), studio.settings, side)
    spec = RunSpec("learn", config, RunFolder(tmp_path / "own"), subjects)
    own = run(spec, Models(studio.backbone), progress=False)
    terms = {key: value for key, value in iterations[0].items() if key != "seconds"}
    assert {key: own["iterations"][0][key] for key in terms} == pytest.approx(terms, rel=1e-6)


def test_learn_streams_every_iteration_then_the_subject(studio, subject_path):
    progress = _learn(studio, "learner", subject_path, max_iters=4)
    running, final = progress[:-1], progress[-1]
    assert len(running) == 4 and all(p.running for p in running)
    assert [len(p.losses) for p in running] == [1, 2, 3, 4]
    assert not final.running and final.message.startswith("Done: max iterations reached after 4 iterations")
    assert len(final.frames) == 4 and sum("(best)" in caption for _, caption in final.frames) == 1
    # Each image with its iteration and loss.
    captions = [caption.split(" (")[0] for _, caption in final.frames]
    assert captions == [f"{i}: {loss:.4f}" for i, loss in enumerate(final.losses)]
    run = studio.root / "learner"
    (folder,) = run.glob("learn-*")
    assert final.best_image == str(folder / "best.png")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["complete"] and metrics["best_iteration"] == final.best_iteration
    with zipfile.ZipFile(final.lora_zip) as archive:
        assert "pytorch_lora_weights.safetensors" in archive.namelist()
    with zipfile.ZipFile(final.run_zip) as archive:
        assert {"best.png", "config.json", "metrics.json"} <= set(archive.namelist())
    assert str(studio.root) in final.lora_zip  # everything under the root
    assert final.message.endswith("; subject: 1 photo") and running[0].message.endswith("; subject: 1 photo")
    config = json.loads((folder / "config.json").read_text())
    assert config["subject"] == "subject.png" and config["photos"] == ["subject.png"]


def test_learn_from_several_photos_of_the_subject(studio, album, built):
    progress = _learn(studio, "album", album, max_iters=2)
    assert progress[0].message.endswith("; subject: 2 photos") and progress[-1].message.endswith("; subject: 2 photos")
    (folder,) = (studio.root / "album").glob("learn-*")
    config = json.loads((folder / "config.json").read_text())
    assert config["subject"] == "front.png" and config["photos"] == ["front.png", "side.png"]
    (loss,) = built
    _learned_from(loss, album)


def test_stop_ends_the_run_at_once_and_keeps_the_best(studio, subject_path):
    seen = []
    for progress in studio.learn("stopper", subject_path, "a photo of a dog", max_iters=200):
        seen.append(progress)
        if len(seen) == 2:
            assert studio.stop("stopper")
    assert len(seen) <= 5  # a stop takes effect at the next iteration
    final = seen[-1]
    assert not final.running and final.message.startswith("Done: stopped after")
    assert final.best_image and final.lora_zip
    (folder,) = (studio.root / "stopper").glob("learn-*")
    assert json.loads((folder / "metrics.json").read_text())["stop_reason"] == "callback"
    assert not studio.stop("stopper")  # nothing runs any more


def test_a_page_that_goes_away_ends_its_run_and_frees_the_model(studio, subject_path):
    run = studio.learn("leaver", subject_path, "a photo of a dog", max_iters=200)
    next(run)
    run.close()  # what Gradio does when the browser goes away
    # The model is free again once the run has ended (at its next iteration), with no one waiting for it.
    assert studio._busy.acquire(timeout=60)
    studio._busy.release()
    with pytest.raises(UploadError, match="learn a subject first"):  # a run the page left is not its subject
        studio.generate("leaver", "a photo of a dog")
    (folder,) = (studio.root / "leaver").glob("learn-*")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["stop_reason"] == "callback" and (folder / "best.png").is_file()


def test_generate_with_the_learned_or_an_uploaded_subject(studio, subject_path, tmp_path):
    final = _learn(studio, "maker", subject_path)[-1]
    images = studio.generate("maker", "a photo of a dog\n\na dog on a beach", num_images=2, steps=1)
    side = studio.backbone.resolution
    assert len(images) == 4 and all(Image.open(p).size == (side, side) for p in images)
    assert all(str(studio.root / "maker") in p for p in images)
    # Another session has no subject of its own, until it uploads one.
    with pytest.raises(UploadError, match="learn a subject first"):
        studio.generate("visitor", "a photo of a dog")
    uploaded = studio.generate("visitor", "a photo of a dog", steps=1, subject_zip=final.lora_zip)
    assert Image.open(uploaded[0]).tobytes() == Image.open(images[0]).tobytes()  # the same subject, seed, prompt
    with pytest.raises(UploadError, match="at least one prompt"):
        studio.generate("maker", " \n ")
    with pytest.raises(UploadError, match="number of images must be 1 to 16"):
        studio.generate("maker", "a dog", num_images=0)
    # A subject learned on another model.
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(final.lora_zip) as source, zipfile.ZipFile(other, "w") as archive:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("siso_subject.json"):
                data = json.dumps({**json.loads(data), "model": "sdxl-turbo"})
            archive.writestr(name, data)
    with pytest.raises(UploadError, match="this subject was learned on sdxl-turbo; the app runs"):
        studio.generate("visitor", "a dog", subject_zip=other)


def _scene(painted: bool):
    """A photo to edit as Gradio's image editor gives it: the photo, and an RGBA paint layer."""
    yy, xx = np.mgrid[0:96, 0:128]
    photo = np.stack([xx * 2, yy * 2, 255 - xx], axis=-1).astype(np.uint8)
    layer = np.zeros((96, 128, 4), dtype=np.uint8)
    if painted:
        layer[30:70, 40:90] = (255, 59, 48, 255)
    return {"background": photo, "layers": [layer], "composite": photo}


def test_edit_with_a_painted_mask_streams_like_learning(studio, subject_path):
    progress = list(studio.edit("editor", _scene(True), "", subject_path, subject_class="dog", max_iters=3))
    assert [p.running for p in progress] == [True, True, True, False]
    final = progress[-1]
    assert final.message.startswith("Done: max iterations reached after 3 iterations") and final.lora_zip
    (folder,) = (studio.root / "editor").glob("edit-*")
    config = json.loads((folder / "config.json").read_text())
    assert config["mask"] == "painted in the app" and config["prompt"] == "a photo of a dog"
    width, height = Image.open(final.best_image).size
    assert width / height == 128 / 96  # the edit, cropped to the photo (at the model's resolution)


def test_edit_with_a_box_and_its_refusals(studio, subject_path):
    final = list(studio.edit("boxer", _scene(False), "40,30,90,70", subject_path, prompt="a photo of sks", max_iters=2))
    (folder,) = (studio.root / "boxer").glob("edit-*")
    assert json.loads((folder / "config.json").read_text())["mask"] == "box 40,30,90,70" and not final[-1].running
    with pytest.raises(UploadError, match="upload the photo to edit first"):
        next(studio.edit("boxer", None, "", subject_path, "dog"))
    with pytest.raises(UploadError, match="paint over the object to replace, or give a box"):
        next(studio.edit("boxer", _scene(False), " ", subject_path, "dog"))
    with pytest.raises(UploadError, match="box"):
        next(studio.edit("boxer", _scene(False), "1,2,3", subject_path, "dog"))
    with pytest.raises(UploadError, match="upload a subject photo first"):
        next(studio.edit("boxer", _scene(True), "", None, "dog"))


def test_edit_with_several_photos_of_each_subject(studio, album, subject_path, built):
    progress = list(studio.edit("album-editor", _scene(True), "", album, "dog", max_iters=1))
    assert progress[-1].message.endswith("; subject: 2 photos") and progress[-1].lora_zip
    (folder,) = (studio.root / "album-editor").glob("edit-*")
    config = json.loads((folder / "config.json").read_text())
    assert config["subject"] == "front.png" and config["photos"] == ["front.png", "side.png"]
    (loss,) = built
    _learned_from(loss, album)
    # Two subjects: the first from two photos, the second from one; each listed with its photos.
    two = {"second_path": subject_path, "second_class": "cat", "second_box": "70,20,120,80"}
    progress = list(studio.edit("album-pair", _scene(True), "", album, "dog", max_iters=1, **two))
    assert progress[0].message.endswith("; photos: dog 2, cat 1") and progress[-1].message.endswith("dog 2, cat 1")
    (folder,) = (studio.root / "album-pair").glob("edit-*")
    config = json.loads((folder / "config.json").read_text())
    assert [(s["photo"], s["photos"], s["class"]) for s in config["subjects"]] == [
        ("front.png", ["front.png", "side.png"], "dog"),
        ("subject.png", ["subject.png"], "cat"),
    ]


def test_edit_two_subjects_each_in_its_region(studio, subject_path):
    two = {"second_path": subject_path, "second_class": "cat", "second_box": "70,20,120,80"}
    progress = list(studio.edit("pair-editor", _scene(True), "", subject_path, "dog", max_iters=2, **two))
    assert "; identity: dog " in progress[0].message and ", cat " in progress[0].message
    assert not progress[-1].running and progress[-1].lora_zip
    (folder,) = (studio.root / "pair-editor").glob("edit-*")
    config = json.loads((folder / "config.json").read_text())
    assert config["prompt"] == "a photo of a dog and a cat"
    assert config["mask"] == "painted in the app; box 70,20,120,80"
    assert [(s["photo"], s["class"], s["term"]) for s in config["subjects"]] == [
        ("subject.png", "dog", "dog"),
        ("subject.png", "cat", "cat"),
    ]
    for message, fields in {
        "upload the second subject's photo, or clear its class and box": {"second_box": "1,2,3,4"},
        "type the second subject's class": {**two, "second_class": " "},
        "the second subject's box: box '70,20,200,80' reaches outside the 128x96 photo": {
            **two,
            "second_box": "70,20,200,80",
        },
    }.items():
        with pytest.raises(UploadError, match=message):
            next(studio.edit("pair-refusals", _scene(True), "", subject_path, "dog", **fields))
    assert not (studio.root / "pair-refusals").exists()


def test_runs_share_the_networks_loaded_once(studio, subject_path, built):
    _learn(studio, "shared", subject_path, max_iters=1)
    _learn(studio, "shared", subject_path, max_iters=1)
    first, second = built
    assert second is not first and all(second.nets[name] is first.nets[name] for name in first.nets)
