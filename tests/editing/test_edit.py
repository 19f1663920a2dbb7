"""Editing: the scene, the background loss, the edit loop on tiny models, and `siso edit` end to end."""

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from console import OFFLINE, SISO, run_siso
from PIL import Image

from siso.backbones import load_backbone
from siso.cli import main
from siso.compose import Subject
from siso.config import EditConfig, EditSettings, InversionSettings, OptimSettings, SimilaritySettings
from siso.editing import BackgroundLoss, composite, edit_subject, prepare_scene
from siso.lora import snapshot
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.run import run
from siso.runs.spec import RunSpec
from siso.vision.masks import MaskError


@pytest.fixture(scope="module")
def scene_photo() -> Image.Image:
    """A 128x96 "scene": a gradient with a blue square (the object to replace) at x 40..80, y 32..72."""
    yy, xx = np.mgrid[0:96, 0:128]
    img = np.stack([255 - xx * 1.5, yy * 2.0, xx * 1.2 + 40], axis=-1)
    img[32:72, 40:80] = (30, 60, 220)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def _box(photo, box=(40, 32, 80, 72)) -> np.ndarray:
    mask = np.zeros((photo.height, photo.width), bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def _edit_config(model_dirs, family="sd", **edit) -> EditConfig:
    return EditConfig(
        model=str(model_dirs[family]),
        train_prompt="a photo of a dog",
        similarity=SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"])),
        optim=OptimSettings(lr=1e-2, max_iters=4, num_inference_steps=4),
        edit=EditSettings(**{"mask_dilation": 1, **edit}),
        inversion=InversionSettings.preset("ddim"),  # fast; ReNoise itself is tested in test_inversion.py
    )


# --- the scene and the background term ------------------------------------------------------------------------


def test_scene_keeps_the_whole_non_square_photo(scene_photo):
    scene = prepare_scene(scene_photo, _box(scene_photo), 32, dilation=0)
    assert scene.image.shape == (1, 3, 32, 32) and scene.box == (0, 4, 32, 28)  # 128x96 -> 32x24, padded 4 + 4
    assert scene.input_image.size == (32, 24) and scene.mask_image.size == (32, 24)
    assert scene.valid.sum() == 32 * 24
    mask = np.asarray(scene.mask_image) > 127
    assert mask[8:18, 10:20].all() and mask.sum() == 10 * 10  # the 40 px square at 1/4 scale
    assert torch.equal(scene.background, scene.valid * (1 - scene.mask))
    grown = prepare_scene(scene_photo, _box(scene_photo), 32, dilation=2)
    assert (np.asarray(grown.mask_image) > 127).sum() > mask.sum()


def test_scene_rejects_masks_that_vanish_or_cover_everything(scene_photo):
    tiny_mask = np.zeros((96, 128), bool)
    tiny_mask[50, 60] = True
    with pytest.raises(MaskError, match="covers no pixel once the photo is resized to 32x24"):
        prepare_scene(scene_photo, tiny_mask, 32)
    with pytest.raises(MaskError, match="covers the whole photo"):
        prepare_scene(scene_photo, _box(scene_photo, (2, 2, 126, 94)), 32, dilation=3)


def test_background_loss_sees_only_pixels_outside_the_mask(scene_photo):
    scene = prepare_scene(scene_photo, _box(scene_photo), 32)
    loss = BackgroundLoss(scene.image, scene.background)
    assert float(loss(scene.image)) == 0
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(images).sum().backward()
    inside = (scene.mask + (1 - scene.valid)).bool().expand_as(images)
    assert (images.grad[inside] == 0).all() and (images.grad[~inside] != 0).all()
    # the mean squared error over background pixels: a constant offset of 0.1 gives 0.01
    shifted = (scene.image + 0.1 * scene.background).clamp(max=10)
    assert torch.allclose(loss(shifted), torch.tensor([0.01]))


def test_composite_restores_every_pixel_outside_the_mask():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    edited = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    mask = np.zeros((24, 32), np.uint8)
    mask[4:20, 6:26] = 255
    for feather in (0, 3):
        out = np.asarray(composite(edited, original, Image.fromarray(mask), feather))
        assert (out[mask == 0] == np.asarray(original)[mask == 0]).all()
        assert (out[10:14, 14:18] == np.asarray(edited)[10:14, 14:18]).all()  # deep inside: the edit
    feathered = np.asarray(composite(edited, original, Image.fromarray(mask), 3)).astype(int)
    hard = np.asarray(composite(edited, original, Image.fromarray(mask), 0)).astype(int)
    assert (feathered[4, 6:26] != hard[4, 6:26]).any()  # the edge blends


# --- the edit loop ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_edit_loop(model_dirs, subject, scene_photo, family):
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    frozen = {k: v.clone() for k, v in backbone.denoiser.state_dict().items()}
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    frames = []
    config = _edit_config(model_dirs, family, bg_weight=10.0)
    config.optim.max_iters = 8
    result = edit_subject(backbone, scene, subject, config, callback=lambda i, im, t: frames.append(im), progress=False)
    assert len(result.history) == 8 and {"dino", "ir", "similarity", "background", "loss"} <= set(result.history[0])
    for h in result.history:
        assert h["loss"] == pytest.approx(h["similarity"] + 10.0 * h["background"], rel=1e-5)
    assert result.best_loss < result.history[0]["loss"]
    # iteration 0 is the zero LoRA: the inversion's reconstruction, at the photo's size
    assert frames[0].size == (32, 24) == result.best_image.size == result.reconstruction.size
    assert np.array_equal(np.asarray(frames[0]), np.asarray(result.reconstruction))
    record = result.record()
    assert record["inversion"]["model_evaluations"] == (5 if family == "sdxl" else 3)  # DDIM: 1 per step (+2 fixes)
    assert np.isfinite(record["inversion"]["psnr"]) and np.isfinite(record["best_background_mse"])
    # only LoRA weights changed
    after = {k.replace(".base_layer", ""): v for k, v in backbone.denoiser.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_background_term_keeps_the_background(model_dirs, subject, scene_photo):
    """Without the background term the similarity alone moves the background away from the input; with c = 10 it
    moves back towards it (8 iterations, tiny SDXL)."""
    finals = {}
    for weight in (0.0, 10.0):
        backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
        scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
        config = _edit_config(model_dirs, "sdxl", bg_weight=weight)
        config.optim.max_iters = config.optim.patience = 8
        history = edit_subject(backbone, scene, subject, config, progress=False).history
        finals[weight] = history[-1]["background"]
        start = history[0]["background"]
    assert finals[10.0] < start < finals[0.0]


def test_edit_keeps_the_best_iteration_and_its_lora(model_dirs, subject, scene_photo):
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    config = _edit_config(model_dirs)
    config.optim.min_improvement, config.optim.patience, config.optim.max_iters = 0.99, 2, 6
    frames = []
    result = edit_subject(backbone, scene, subject, config, callback=lambda i, im, t: frames.append(im), progress=False)
    assert result.best_iteration == 0 and result.stop_reason == "converged" and len(frames) == 3
    assert np.array_equal(np.asarray(result.best_image), np.asarray(frames[0]))
    assert not np.array_equal(np.asarray(frames[-1]), np.asarray(frames[0]))  # the LoRA did move
    carried = snapshot({"unet": backbone.denoiser})["unet"]
    assert all(torch.equal(v, result.best_lora["unet"][k]) for k, v in carried.items())  # the backbone has it back


def test_background_target_reconstruction_is_zero_at_identity(model_dirs, subject, scene_photo):
    """Paper Eq. 3 compares with the inversion's reconstruction, which the zero LoRA reproduces: L_bg = 0 at
    iteration 0 (the reference code's target, the input, gives the inversion's error instead)."""
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    config = _edit_config(model_dirs, bg_target="reconstruction")
    config.optim.max_iters = 1
    result = edit_subject(backbone, scene, subject, config, progress=False)
    assert result.history[0]["background"] == 0.0
    assert result.best_background_mse > 0  # against the input


# --- siso edit ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_path(scene_photo, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    scene_photo.save(path)
    return path


@pytest.fixture
def edit_args(model_dirs, subject_path, scene_path, similarity_args):
    return [
        "edit",
        "--image",
        str(scene_path),
        "--subject",
        str(subject_path),
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--lr",
        "1e-2",
        "--max-iters",
        "3",
        "--mask-dilation",
        "1",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def detection_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    return tiny.make_grounding_dino(root / "gd"), tiny.make_sam(root / "sam")


def test_console_script_edit_with_box_and_composite(edit_args, tmp_path):
    out = tmp_path / "run"
    args = [*edit_args, "--box", "40,30,80,70", "--subject-class", "dog", "--composite", "--out", str(out)]
    proc = run_siso(args)
    assert proc.returncode == 0, proc.stderr
    assert "inversion PSNR" in proc.stdout and "Traceback" not in proc.stderr
    for name in (
        "best.png",
        "best_uncomposited.png",
        "input.png",
        "mask.png",
        "inversion.png",
        "iterations.png",
        "loss.png",
        "iterations/0002.png",
        "lora/pytorch_lora_weights.safetensors",
    ):
        assert (out / name).is_file(), name
    best, raw, source, mask = (
        np.asarray(Image.open(out / f"{n}.png")) for n in ("best", "best_uncomposited", "input", "mask")
    )
    assert best.shape == source.shape == (24, 32, 3) and mask.shape == (24, 32)
    assert (best[mask == 0] == source[mask == 0]).all()  # --composite: the background is the input's
    assert not (raw[mask == 0] == source[mask == 0]).all()
    config = json.loads((out / "config.json").read_text())
    assert config["prompt"] == "a photo of a dog" and config["mask"] == "box 40,30,80,70"
    assert EditConfig.from_dict(config["siso"]).edit.composite is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["inversion_method"] == "renoise"
    assert {"psnr", "model_evaluations"} <= set(metrics["inversion"]) and "best_background_mse" in metrics
    assert {"similarity", "background"} <= set(metrics["iterations"][0])


def test_edit_with_mask_file_and_sdxl(capsys, edit_args, model_dirs, scene_photo, tmp_path):
    mask = Image.fromarray(_box(scene_photo).astype(np.uint8) * 255).resize((256, 192), Image.Resampling.NEAREST)
    mask.save(tmp_path / "mask.png")
    args = [*edit_args, "--model", str(model_dirs["sdxl"]), "--mask", str(tmp_path / "mask.png")]
    out = tmp_path / "run"
    assert main([*args, "--prompt", "a photo of a toy", "--inversion", "ddim", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["mask"].startswith("file ") and config["siso"]["inversion"]["method"] == "ddim"
    assert config["siso"]["train_prompt"] == "a photo of a toy"
    assert "best edit at iteration" in capsys.readouterr().out


def test_edit_detects_the_object(edit_args, detection_dirs, tmp_path):
    detector, segmenter = detection_dirs
    out = tmp_path / "run"
    args = [*edit_args, "--object", "dog", "--subject-class", "dog", "--out", str(out)]
    assert main([*args, "--detector", str(detector), "--segmenter", str(segmenter)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["mask"] == "detected" and config["object"] == "dog"
    mask = np.asarray(Image.open(out / "mask.png"))
    assert 0 < (mask > 127).sum() < mask.size


def test_nothing_detected_names_the_alternatives(subject, scene_photo, model_dirs, detection_dirs, tmp_path):
    detector, segmenter = detection_dirs
    job = EditJob(scene_photo, object_name="dog", subject_class="dog", detector=str(detector), box_threshold=1.0)
    job.segmenter = str(segmenter)  # a random tiny detector scores boxes below 1: nothing passes
    with pytest.raises(MaskError, match=r"no 'dog' was detected.*--object NAME.*--box x0,y0,x1,y1 or --mask PNG"):
        run(RunSpec("edit", _edit_config(model_dirs), RunFolder(tmp_path / "run"), [Subject(subject)], job))
    assert not (tmp_path / "run").exists()  # failed before anything was written


def test_sigterm_keeps_the_best_edit(edit_args, tmp_path):
    out = tmp_path / "run"
    args = [*edit_args, "--box", "40,30,80,70", "--subject-class", "dog", "--out", str(out)]
    args[args.index("--max-iters") + 1] = "100000"
    proc = subprocess.Popen(
        [SISO, *args, "--patience", "100000"], env=OFFLINE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (out / "iterations" / "0002.png").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["stop_reason"] == "interrupted"
    assert (out / "best.png").is_file() and (out / "inversion.png").is_file()


def _error(capsys, args) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "40,30,200,70"], "outside"),
        (["--box", "40,30,40,70"], "empty"),
        (["--box", "40,30,80"], "4 numbers"),
        (["--box", "0,0,1,1", "--resolution", "32"], "covers no pixel once the photo is resized"),
        (["--mask", "MISSING.png"], "not found"),
        (["--strength", "0"], "strength"),
        (["--strength", "nan"], "strength"),
        (["--bg-weight", "-1"], "bg_weight"),
        (["--mask-dilation", "-2"], "mask_dilation"),
        (["--feather", "-1"], "feather"),
        (["--steps", "4", "--grad-steps", "4"], "grad_steps"),
    ],
)
def test_edit_bad_input(capsys, edit_args, tmp_path, extra, message):
    extra = [str(tmp_path / e) if e == "MISSING.png" else e for e in extra]
    line = _error(capsys, [*edit_args, "--subject-class", "dog", *extra, "--out", str(tmp_path / "run")])
    assert message in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["empty", "full", "aspect", "damaged"])
def test_edit_bad_mask_file(capsys, edit_args, tmp_path, kind):
    path = tmp_path / "mask.png"
    size = (100, 100) if kind == "aspect" else (128, 96)
    value = 255 if kind == "full" else 0
    Image.new("L", size, value).save(path)
    if kind == "damaged":
        path.write_bytes(path.read_bytes()[:40])
    line = _error(capsys, [*edit_args, "--mask", str(path), "--out", str(tmp_path / "run")])
    assert str(path) in line or "mask" in line


@pytest.mark.parametrize("kind", ["missing", "damaged", "tiny"])
def test_edit_bad_scene_photo(capsys, edit_args, tmp_path, kind):
    path = tmp_path / "scene.png"
    if kind != "missing":
        Image.new("RGB", (40, 40) if kind == "tiny" else (128, 96)).save(path)
    if kind == "damaged":
        path.write_bytes(path.read_bytes()[:60])
    args = [*edit_args, "--box", "1,1,20,20", "--out", str(tmp_path / "run")]
    args[args.index("--image") + 1] = str(path)
    assert "photo to edit" in _error(capsys, args)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--subject-class", " ", "--box", "1,1,20,20"], "subject class must not be empty"),
        (["--object", ""], "object must not be empty"),
        (["--prompt", "", "--box", "1,1,20,20"], "prompt must not be empty"),
        (["--subject-class", "dog", "--detector", "DINO"], "is a dinov2 model, not Grounding DINO"),
        (["--subject-class", "dog", "--detector", "GD", "--segmenter", "GD"], "is a grounding-dino model, not SAM"),
        (["--subject-class", "dog", "--device", "cuda:3"], "device 'cuda:3' cannot be used"),
    ],
)
def test_edit_bad_names_and_models(capsys, edit_args, model_dirs, detection_dirs, tmp_path, extra, message):
    folders = {"DINO": str(model_dirs["dino"]), "GD": str(detection_dirs[0])}
    extra = [folders.get(e, e) for e in extra]
    assert message in _error(capsys, [*edit_args, *extra, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_edit_gradients_reach_only_lora_and_only_through_the_last_steps(model_dirs, scene_photo):
    """Denoising from the inverted latent: gradients reach the LoRA only, and ``grad_steps`` decides how many of the
    3 steps keep their graph (same image, different gradient)."""
    from siso.editing.inversion import invert
    from siso.lora import add_lora

    backbone = load_backbone(str(model_dirs["sdxl"]), device="cpu")
    config = _edit_config(model_dirs, "sdxl")
    scene = prepare_scene(scene_photo, _box(scene_photo), backbone.resolution, 1)
    sampler = backbone.edit_sampler(4, 0.75)
    cond = backbone.encode_prompt(config.train_prompt)
    inversion = invert(sampler, backbone.encode(scene.image), cond, config.inversion, torch.Generator().manual_seed(0))
    add_lora(backbone, config.lora)
    with torch.no_grad():  # move B off zero so that every LoRA tensor gets a gradient
        for name, p in backbone.denoiser.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01, generator=torch.Generator().manual_seed(1))
    grads, images = {}, {}
    for k in (1, 3):
        image = backbone.denoise(sampler, inversion.latents, inversion.noises, cond, grad_steps=k)
        image.square().mean().backward()
        named = dict(backbone.denoiser.named_parameters())
        assert all(("lora_" in n) == (p.grad is not None) for n, p in named.items())
        grads[k] = torch.cat([p.grad.flatten() for n, p in named.items() if p.grad is not None])
        images[k] = image.detach()
        backbone.denoiser.zero_grad(set_to_none=True)
    assert torch.equal(images[1], images[3]) and not torch.allclose(grads[1], grads[3])
    assert not inversion.latents.requires_grad and not backbone.pipe.vae.decoder.conv_out.weight.requires_grad


def test_edit_needs_a_family_that_edits(capsys, monkeypatch, edit_args, tmp_path):
    from siso.backbones import SDBackbone

    monkeypatch.setattr(SDBackbone, "supports_editing", False)
    line = _error(capsys, [*edit_args, "--box", "1,1,20,20", "--out", str(tmp_path / "run")])
    assert "cannot edit yet; editing works with sdxl-turbo" in line


def test_edit_compile_compiles_the_similarity_networks(edit_args, tmp_path, monkeypatch):
    # What the composer is given to compile, recorded instead of compiling (the compiled loop itself is tested in
    # tests/accel/test_compile.py): editing's objective hands over its similarity networks like generation's.
    import siso.accel.stack

    compiled = []

    @contextlib.contextmanager
    def record(*modules):
        compiled.extend(modules)
        yield

    monkeypatch.setattr(siso.accel.stack, "compiled", record)
    args = [*edit_args, "--box", "40,30,80,70", "--subject-class", "dog", "--compile", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    names = {type(m).__name__ for m in compiled}
    assert {"UNet2DConditionModel", "Decoder", "DinoEmbedding", "ClipImageEmbedding"} <= names


def test_a_box_without_the_subject_class_names_it_when_the_detector_is_missing(capsys, edit_args, tmp_path):
    # Only the subject's class is to be found (the box is the mask): the one-line error of the missing detector
    # also offers --subject-class, with which no detector is needed.
    args = [*edit_args, "--box", "40,30,80,70", "--detector", "nobody/no-such-detector", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nobody/no-such-detector'" in err
    assert "Or name the subject with --subject-class NAME (e.g. dog): no detector then" in err
    assert main([*args, "--subject-class", "dog"]) == 0  # and with it, the detector is never loaded
