"""``siso edit`` (`siso.cli.edit`): end to end on tiny models (box, mask file, detected object, Ctrl-C), and every
bad input ends in one clear line."""

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from console import OFFLINE, SISO, run_siso
from PIL import Image

from siso.cli import main
from siso.config import EditConfig

from ..editing.helpers import _box
from .helpers import _error


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
