"""``--ip-adapter``: a run that starts from an IP-Adapter end to end, its reuse with ``--lora``, and every bad use
of the flags ends in one clear line before anything loads."""

import json

import numpy as np
import pytest
from console import run_siso
from diffusers import UNet2DConditionModel
from PIL import Image
from tiny import make_ip_adapter

from siso.cli import main


@pytest.fixture(scope="module")
def ip_adapter_dir(model_dirs, tmp_path_factory):
    unet = UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet")
    return make_ip_adapter(tmp_path_factory.mktemp("ip-adapter"), unet)


def _error(capsys, args) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), captured.err
    return lines[0]


def test_console_script_learns_over_the_adapter_and_reuses_it(
    model_dirs, subject_path, similarity_args, ip_adapter_dir, tmp_path
):
    out = tmp_path / "run"
    common = ["--prompt", "a dog on the beach", "--steps", "2", "--quiet"]
    proc = run_siso(
        [
            "generate",
            "--subject",
            str(subject_path),
            "--model",
            str(model_dirs["sdxl"]),
            *similarity_args,
            "--ip-adapter",
            str(ip_adapter_dir),
            "--ip-adapter-scale",
            "0.7",
            "--lr",
            "1e-2",
            "--max-iters",
            "2",
            *common,
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["siso"]["ip_adapter"] == {"model": str(ip_adapter_dir), "weight_name": None, "scale": 0.7}
    subject = json.loads((out / "lora" / "siso_subject.json").read_text())
    assert subject["ip_adapter"]["weight_name"] == "sdxl_models/ip-adapter_sdxl.safetensors"
    assert subject["ip_adapter"]["scale"] == 0.7 and (out / "lora" / "ip_adapter_image.png").is_file()

    assert main(["generate", "--lora", str(out / "lora"), *common, "--out", str(tmp_path / "reuse")]) == 0
    [first] = sorted((out / "images").glob("*.png"))
    again = tmp_path / "reuse" / "images" / first.name
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


@pytest.mark.parametrize("family", ["sd", "sana", "flux"])
def test_family_without_adapter_is_refused(capsys, model_dirs, subject_path, ip_adapter_dir, tmp_path, family):
    args = ["generate", "--subject", str(subject_path), "--model", str(model_dirs[family]), "--prompt", "x"]
    args += ["--ip-adapter", str(ip_adapter_dir), "--out", str(tmp_path / "o")]
    assert "takes no IP-Adapter; a zero-shot start works with sdxl-turbo" in _error(capsys, args)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ip-adapter", ":"], "--ip-adapter takes ID|DIR[:WEIGHT_FILE], got ':'"),
        (["--ip-adapter", "h94/IP-Adapter:"], "--ip-adapter takes ID|DIR[:WEIGHT_FILE], got 'h94/IP-Adapter:'"),
        (["--ip-adapter", "h94/IP-Adapter", "--ip-adapter-scale", "nan"], "--ip-adapter-scale must be a finite"),
        (["--ip-adapter", "h94/IP-Adapter", "--ip-adapter-scale", "-1"], "scale must be a finite number >= 0, got -1"),
        (["--ip-adapter-scale", "0.3"], "--ip-adapter-scale needs --ip-adapter"),
        (["--subject", "/x.png", "--ip-adapter", "h94/IP-Adapter"], "--ip-adapter takes one subject"),
    ],
)
def test_bad_adapter_flags(capsys, subject_path, tmp_path, extra, message):
    # An unloadable model: had anything loaded before the check, its error would be the one reported.
    args = ["generate", "--subject", str(subject_path), "--model", "/nonexistent/model", "--prompt", "x"]
    assert message in _error(capsys, [*args, *extra, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra", [["--ip-adapter", "h94/IP-Adapter"], ["--ip-adapter-scale", "0.3"]])
def test_reuse_and_edit_refuse_the_flags(capsys, subject_path, tmp_path, extra):
    reuse = ["generate", "--lora", str(tmp_path / "lora"), "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "a saved one brings its own" in _error(capsys, [*reuse, *extra])
    edit = ["edit", "--image", str(subject_path), "--subject", str(subject_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:  # not an edit option at all (argparse's usage error)
        main([*edit, *extra])
    assert exit_.value.code == 2 and f"unrecognized arguments: {extra[0]}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_adapter_is_one_line_and_writes_nothing(capsys, model_dirs, subject_path, ip_adapter_dir, tmp_path):
    args = ["generate", "--subject", str(subject_path), "--model", str(model_dirs["sdxl"]), "--prompt", "x"]
    args += ["--out", str(tmp_path / "o")]
    assert "IP-Adapter directory /nonexistent/adapter does not exist" in _error(
        capsys, [*args, "--ip-adapter", "/nonexistent/adapter"]
    )
    assert "no file named nope.safetensors" in _error(
        capsys, [*args, "--ip-adapter", f"{ip_adapter_dir}:nope.safetensors"]
    )
    assert not (tmp_path / "o").exists()
