"""A refine run (`siso.runs.refine`) on the tiny models: the run folder at the image's size, ``--composite`` exact
outside the region, ``before``/``after`` recomputed independently, the whole image, several subjects, detection, an
IP-Adapter start, and regions that cannot be used."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from PIL import Image
from tiny import make_ip_adapter

from siso.compose import Subject
from siso.config import (
    EditSettings,
    InversionSettings,
    IPAdapterSettings,
    OptimSettings,
    RefineConfig,
    RefineSettings,
    SimilaritySettings,
)
from siso.images import pil_to_tensor
from siso.losses.embeddings import ClipImageEmbedding, DinoEmbedding
from siso.runs.folder import RunFolder
from siso.runs.jobs import RefineJob
from siso.runs.models import Models
from siso.runs.refine import region_box
from siso.runs.run import run
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError

from ..editing.helpers import _box


def refine_config(model_dirs, family="sd", edit=None, refine=None, **fields) -> RefineConfig:
    return RefineConfig(
        model=str(model_dirs[family]),
        similarity=SimilaritySettings(
            dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]), dino_resolution=28
        ),
        optim=OptimSettings(lr=1e-2, max_iters=3, num_inference_steps=4),
        edit=EditSettings(**{"strength": 0.5, "mask_dilation": 1, **(edit or {})}),
        inversion=InversionSettings.preset("ddim"),  # fast; ReNoise itself is tested in tests/editing
        refine=RefineSettings(**{"check_model": str(model_dirs["clip"]), **(refine or {})}),
        **fields,
    )


def refine(config, out, subjects, job, models=None) -> dict:
    return run(RunSpec("refine", config, RunFolder(out), subjects, job), models, progress=False)


@pytest.fixture(scope="module")
def refined(model_dirs, scene_photo, subject, tmp_path_factory):
    """One refine of the scene's square with --composite: its folder and metrics."""
    out = tmp_path_factory.mktemp("refine") / "run"
    config = refine_config(model_dirs, edit={"composite": True})
    metrics = refine(config, out, [Subject(subject, "dog", region=_box(scene_photo))], RefineJob(scene_photo))
    return out, metrics


def test_a_refine_writes_an_edits_folder_at_the_images_size(refined, scene_photo):
    out, metrics = refined
    for name in ("best.png", "best_uncomposited.png", "input.png", "mask.png", "inversion.png"):
        with Image.open(out / name) as image:
            assert image.size == scene_photo.size, name
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file() and (out / "loss.png").is_file()
    assert np.array_equal(np.asarray(Image.open(out / "input.png")), np.asarray(scene_photo))
    config = json.loads((out / "config.json").read_text())
    assert config["prompt"] == "a photo of a dog" and config["siso"]["edit"]["strength"] == 0.5
    assert config["subjects"][0]["class"] == "dog" and config["subjects"][0]["term"] == "dog"
    assert metrics["complete"] and metrics["start"] == "image" and len(metrics["iterations"]) == 3
    assert {"structure", "background", "identity/dog"} <= set(metrics["iterations"][0])
    assert all(np.isfinite(row["structure"]) and row["structure"] >= 0 for row in metrics["iterations"])
    assert json.loads((out / "metrics.json").read_text())["after"] == metrics["after"]


def test_composite_keeps_every_pixel_outside_the_region_exactly(refined, scene_photo):
    out, _ = refined
    best = np.asarray(Image.open(out / "best.png")).astype(int)
    mask = np.asarray(Image.open(out / "mask.png")) > 127
    assert mask[_box(scene_photo)].all()  # the region, dilated at model resolution
    assert np.array_equal(best[~mask], np.asarray(scene_photo).astype(int)[~mask])
    assert not np.array_equal(best[mask], np.asarray(scene_photo).astype(int)[mask])


def test_before_and_after_recomputed_independently(refined, model_dirs, subject, scene_photo):
    out, metrics = refined
    x0, y0, x1, y1 = region_box(_box(scene_photo))
    assert (x0, y0, x1, y1) == (40, 32, 80, 72)
    nets = {
        "dino": DinoEmbedding.from_pretrained(str(model_dirs["dino"]), 28),
        "ir": ClipImageEmbedding.from_pretrained(str(model_dirs["clip"])),
        "check": ClipImageEmbedding.from_pretrained(str(model_dirs["clip"])),
    }
    for when, file in (("before", "input.png"), ("after", "best.png")):
        crop = Image.open(out / file).convert("RGB").crop((x0, y0, x1, y1))
        for name, net in nets.items():
            with torch.no_grad():
                cosine = F.cosine_similarity(net(pil_to_tensor(crop)), net(pil_to_tensor(subject)))
            assert metrics[when]["dog"][name] == pytest.approx(float(cosine), abs=1e-5), (when, name)


def test_the_whole_image_has_no_background_term(model_dirs, scene_photo, subject, tmp_path):
    config = refine_config(model_dirs, refine={"structure_weight": 0.0})
    metrics = refine(config, tmp_path / "run", [Subject(subject, "dog")], RefineJob(scene_photo, whole=True))
    assert metrics["regions"] == ["all"] and metrics["best_background_mse"] is None
    assert all(row["background"] == 0 and "structure" not in row for row in metrics["iterations"])
    assert (np.asarray(Image.open(tmp_path / "run" / "mask.png")) == 255).all()


def test_several_subjects_each_on_its_region(model_dirs, scene_photo, subject, tmp_path):
    subjects = [
        Subject(subject, "dog", region=_box(scene_photo, (4, 4, 40, 40))),
        Subject(subject.rotate(90), "cat", region=_box(scene_photo, (80, 40, 120, 90))),
    ]
    job = RefineJob(scene_photo, sources=["box 4,4,40,40", "box 80,40,120,90"])
    metrics = refine(refine_config(model_dirs), tmp_path / "run", subjects, job)
    assert set(metrics["after"]) == {"dog", "cat"} and metrics["regions"] == job.sources
    assert {"identity/dog", "identity/cat"} <= set(metrics["iterations"][0])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["prompt"] == "a photo of a dog and a cat"


def test_the_region_is_detected_by_the_subjects_class(model_dirs, detection_dirs, scene_photo, subject, tmp_path):
    detector, segmenter = map(str, detection_dirs)
    job = RefineJob(scene_photo, detector=detector, segmenter=segmenter)
    metrics = refine(refine_config(model_dirs), tmp_path / "run", [Subject(subject, "dog")], job)
    assert metrics["regions"] == ["detected dog"]
    mask = np.asarray(Image.open(tmp_path / "run" / "mask.png")) > 127
    assert 0 < mask.sum() < mask.size


@pytest.mark.parametrize("case", ["not found", "empty", "size", "whole with two"])
def test_unusable_regions_write_nothing(model_dirs, detection_dirs, scene_photo, subject, tmp_path, case):
    detector, segmenter = map(str, detection_dirs)
    region = {"empty": np.zeros((96, 128), bool), "size": np.ones((10, 10), bool)}.get(case)
    subjects = [Subject(subject, "dog", region=region)] * (2 if case == "whole with two" else 1)
    # A threshold no score reaches: the detector finds nothing.
    job = RefineJob(scene_photo, whole=case == "whole with two", detector=detector, segmenter=segmenter)
    job.box_threshold = 1.01
    message = {
        "not found": "no 'dog' was found in the image to refine: give --box x0,y0,x1,y1, --mask PNG or --region all",
        "empty": "region of subject 1 is empty",
        "size": "not the size of the image",
        "whole with two": "--region all refines one subject",
    }[case]
    with pytest.raises(MaskError, match=message.replace("(", r"\(")):
        refine(refine_config(model_dirs), tmp_path / "run", subjects, job)
    assert not (tmp_path / "run").exists()


def test_an_ip_adapter_start_draws_the_image_then_refines_it(model_dirs, subject, tmp_path):
    unet = UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet")
    adapter = make_ip_adapter(tmp_path / "adapter", unet)
    config = refine_config(
        model_dirs, "sdxl", refine={"start": "ip-adapter"}, ip_adapter=IPAdapterSettings(str(adapter))
    )
    models = Models()
    metrics = refine(config, tmp_path / "run", [Subject(subject, "dog")], RefineJob(whole=True), models)
    assert metrics["start"] == "ip-adapter" and metrics["complete"]
    backbone = models.loaded
    assert backbone.ip_adapter is None  # taken off before the LoRA: the LoRA is the frozen model's
    drawn = Image.open(tmp_path / "run" / "input.png")
    assert drawn.size == (backbone.resolution, backbone.resolution)


def test_a_refine_run_needs_its_job_and_config(model_dirs, scene_photo, subject, tmp_path):
    from siso.config import EditConfig
    from siso.runs.jobs import EditJob

    config = refine_config(model_dirs)
    with pytest.raises(ValueError, match="RefineJob and a RefineConfig"):
        RunSpec("refine", config, None, [Subject(subject)], EditJob(scene_photo))
    with pytest.raises(ValueError, match="RefineJob and a RefineConfig"):
        RunSpec("refine", EditConfig(), None, [Subject(subject)], RefineJob(scene_photo))
    with pytest.raises(ValueError, match="an EditJob and an EditConfig"):
        RunSpec("edit", config, None, [Subject(subject)], EditJob(scene_photo))
    with pytest.raises(ValueError, match="not both"):
        RunSpec("refine", config, None, [Subject(subject)], RefineJob())
    assert RunSpec("refine", config, None, [Subject(subject)], RefineJob(scene_photo)).composed


@pytest.mark.parametrize("family", ["sdxl", "flux", "sana"])
def test_a_refine_on_every_backbone(model_dirs, scene_photo, subject, tmp_path, family):
    config = refine_config(model_dirs, family, edit={"composite": True})
    config = RefineConfig.merged(
        config.model,
        {},
        similarity=config.similarity,
        edit=config.edit,
        inversion=config.inversion,
        refine=config.refine,
        optim={"lr": 1e-2, "max_iters": 2, **({"num_inference_steps": 4} if family == "sana" else {})},
    )
    job = RefineJob(scene_photo)
    metrics = refine(config, tmp_path / "run", [Subject(subject, "dog", region=_box(scene_photo))], job)
    assert metrics["complete"] and len(metrics["iterations"]) == 2
    assert all(np.isfinite(row["loss"]) for row in metrics["iterations"])
    best = np.asarray(Image.open(tmp_path / "run" / "best.png"))
    mask = np.asarray(Image.open(tmp_path / "run" / "mask.png")) > 127
    assert best.shape == (96, 128, 3) and (best[~mask] == np.asarray(scene_photo)[~mask]).all()


def test_interrupted_inside_the_first_iteration_keeps_its_image(model_dirs, scene_photo, subject, tmp_path):
    def interrupt(iteration, image, terms):
        raise KeyboardInterrupt

    job = RefineJob(scene_photo, whole=True)
    spec = RunSpec("refine", refine_config(model_dirs), RunFolder(tmp_path / "run"), [Subject(subject, "dog")], job)
    with pytest.raises(KeyboardInterrupt):
        run(spec, progress=False, callback=interrupt)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["stop_reason"] == "interrupted" and metrics["iterations"] == []
    assert (tmp_path / "run" / "best.png").is_file() and not (tmp_path / "run" / "loss.png").exists()
