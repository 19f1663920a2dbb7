"""``siso refine`` (`siso.cli.refine`): end to end on tiny models (the console script, a box, the whole image, an
IP-Adapter start's refusals), and every bad input ends in one clear line and writes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
from console import run_siso
from PIL import Image

from siso.cli import main
from siso.config import RefineConfig

from .helpers import _error


@pytest.fixture(scope="module")
def image_path(scene_photo, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "zero_shot.png"
    scene_photo.save(path)
    return path


@pytest.fixture
def refine_args(model_dirs, subject_path, image_path, similarity_args):
    return [
        "refine",
        "--image",
        str(image_path),
        "--subject",
        str(subject_path),
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--check-model",
        str(model_dirs["clip"]),
        "--lr",
        "1e-2",
        "--max-iters",
        "2",
        "--mask-dilation",
        "1",
        "--inversion",
        "ddim",
        "--quiet",
    ]


def test_console_script_refine_with_box_and_composite(refine_args, scene_photo, tmp_path):
    out = tmp_path / "run"
    proc = run_siso([*refine_args, "--box", "40,32,80,72", "--subject-class", "dog", "--composite", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "dog: similarity to the subject's photos dino" in proc.stdout and "Traceback" not in proc.stderr
    best, source = (np.asarray(Image.open(out / f"{name}.png")) for name in ("best", "input"))
    mask = np.asarray(Image.open(out / "mask.png")) > 127
    assert best.shape == source.shape == (96, 128, 3)
    assert (best[~mask] == source[~mask]).all()
    config = json.loads((out / "config.json").read_text())
    assert config["subjects"][0]["region"] == "box 40,32,80,72" and config["image"] == str(refine_args[2])
    siso = RefineConfig.from_dict(config["siso"])
    assert siso.edit.strength == 0.5 and siso.edit.composite and siso.refine.structure_weight == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["before"]["dog"]) == {"dino", "ir", "check"} and metrics["complete"]


def test_refine_the_whole_image_with_its_settings(refine_args, tmp_path):
    out = tmp_path / "run"
    extra = ["--region", "all", "--subject-class", "dog", "--strength", "0.75", "--structure-weight", "0"]
    assert main([*refine_args, *extra, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["subjects"][0]["region"] == "all"
    assert config["siso"]["edit"]["strength"] == 0.75 and config["siso"]["refine"]["structure_weight"] == 0


def test_a_class_not_found_names_the_other_ways(capsys, monkeypatch, refine_args, detection_dirs, tmp_path):
    from siso.vision.segmenter import ObjectSegmenter

    monkeypatch.setattr(ObjectSegmenter, "segment", lambda self, image, name: None)
    detector, segmenter = map(str, detection_dirs)
    args = [*refine_args, "--subject-class", "dog", "--detector", detector, "--segmenter", segmenter]
    line = _error(capsys, [*args, "--out", str(tmp_path / "run")])
    assert "no 'dog' was found in the image to refine" in line
    assert "--box x0,y0,x1,y1, --mask PNG or --region all" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "40,30,200,70"], "reaches outside the 128x96 photo"),
        (["--box", "40,30,40,70"], "empty"),
        (["--mask", "EMPTY.png"], "covers no pixel"),
        (["--strength", "0"], "strength must be in (0, 1]"),
        (["--strength", "1.5"], "strength must be in (0, 1]"),
        (["--strength", "nan"], "--strength must be a finite number"),
        (["--structure-weight", "-1"], "structure_weight"),
        (["--box", "1,1,20,20", "--mask", "EMPTY.png"], "both --box and --mask"),
        (["--region", "all", "--box", "1,1,20,20"], "--region all is the whole image"),
        (["--start", "ip-adapter"], "drop --image"),
        (["--ip-adapter", "h94/IP-Adapter"], "--ip-adapter picks the adapter of --start ip-adapter"),
        (["--prompt", "", "--region", "all"], "prompt must not be empty"),
    ],
)
def test_refine_bad_input(capsys, refine_args, tmp_path, extra, message):
    Image.new("L", (128, 96), 0).save(tmp_path / "EMPTY.png")
    extra = [str(tmp_path / e) if e == "EMPTY.png" else e for e in extra]
    line = _error(capsys, [*refine_args, "--subject-class", "dog", *extra, "--out", str(tmp_path / "run")])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_refine_needs_a_subject_class_that_names_something(capsys, refine_args, tmp_path):
    line = _error(capsys, [*refine_args, "--subject-class", " ", "--out", str(tmp_path / "run")])
    assert "subject class must not be empty" in line


def test_refine_needs_an_image_that_is_an_image(capsys, refine_args, tmp_path):
    path = tmp_path / "zero_shot.png"
    path.write_bytes(b"not a png")
    args = [*refine_args, "--region", "all", "--out", str(tmp_path / "run")]
    args[args.index("--image") + 1] = str(path)
    assert "image to refine" in _error(capsys, args)
    args.remove("--image")
    args.remove(str(path))
    assert "give the image to refine: --image IMAGE" in _error(capsys, args)
    assert not (tmp_path / "run").exists()


def test_an_ip_adapter_start_needs_a_family_with_an_adapter(capsys, refine_args, tmp_path):
    args = [a for a in refine_args if a not in ("--image", refine_args[2])]
    line = _error(capsys, [*args, "--start", "ip-adapter", "--region", "all", "--out", str(tmp_path / "run")])
    assert "takes no IP-Adapter; a zero-shot start works with sdxl-turbo" in line
    sdxl = [*args, "--start", "ip-adapter", "--box", "1,1,20,20", "--out", str(tmp_path / "run")]
    sdxl[sdxl.index("--model") + 1] = "sdxl-turbo"
    assert "no --box or --mask can point into it" in _error(capsys, sdxl)
