"""The `siso` command: end to end on tiny local models, and every bad input ends in one clear line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siso.cli import main

SISO = str(Path(sys.executable).parent / "siso")  # the installed console script


@pytest.fixture
def base_args(model_dirs, subject_path):
    return [
        "generate",
        "--subject",
        str(subject_path),
        "--model",
        str(model_dirs["sd"]),
        "--dino-model",
        str(model_dirs["dino"]),
        "--ir-model",
        str(model_dirs["clip"]),
        "--lr",
        "1e-2",
        "--dino-resolution",
        "28",
    ]


def _run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([SISO, *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def test_console_script_end_to_end_and_reuse(base_args, tmp_path):
    out = tmp_path / "run"
    proc = _run(
        [
            *base_args,
            "--prompt",
            "a dog in Paris",
            "--prompt",
            "a dog on the moon",
            "--train-prompt",
            "a photo of a dog",
            "--num-images",
            "2",
            "--max-iters",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "siso: stopped (max_iters)" in proc.stdout and "wrote 4 image(s)" in proc.stdout
    for name in (
        "best.png",
        "iterations.png",
        "loss.png",
        "config.json",
        "metrics.json",
        "lora/pytorch_lora_weights.safetensors",
        "lora/siso_subject.json",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "iterations").iterdir()) == [f"{i:04d}.png" for i in range(4)]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and metrics["stop_reason"] == "max_iters" and len(metrics["iterations"]) == 4
    assert {"loss", "dino", "ir", "seconds"} <= set(metrics["iterations"][0])
    assert {"load_seconds", "optimize_seconds", "generate_seconds"} <= set(metrics["timings"])
    images = [r["file"] for r in metrics["images"]]
    assert len(images) == 4 and all((out / f).is_file() for f in images)
    assert [(r["prompt"], r["seed"]) for r in metrics["images"]] == [
        ("a dog in Paris", 3),
        ("a dog in Paris", 4),
        ("a dog on the moon", 3),
        ("a dog on the moon", 4),
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["siso"]["train_prompt"] == "a photo of a dog" and config["siso"]["optim"]["seed"] == 3
    assert config["siso"]["similarity"]["dino_resolution"] == 28
    assert config["command"][:2] == ["siso", "generate"]

    # Stage two: the saved subject regenerates the same images without optimizing.
    again = tmp_path / "again"
    proc = _run(
        [
            "generate",
            "--lora",
            str(out / "lora"),
            "--prompt",
            "a dog in Paris",
            "--prompt",
            "a dog on the moon",
            "--num-images",
            "2",
            "--seed",
            "3",
            "--out",
            str(again),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    for record in metrics["images"]:
        assert np.array_equal(
            np.asarray(Image.open(out / record["file"])), np.asarray(Image.open(again / record["file"]))
        )


def test_console_script_starts_without_transformers_torchvision_notices():
    proc = _run(["--help"])
    assert proc.returncode == 0 and "usage: siso" in proc.stdout
    assert "requires torchvision" not in proc.stderr and proc.stderr == ""


def test_sigterm_keeps_best_so_far(base_args, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            SISO,
            *base_args,
            "--prompt",
            "a dog",
            "--max-iters",
            "100000",
            "--patience",
            "100000",
            "--quiet",
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "iterations" / "0002.png").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; the best-so-far image, LoRA and config are in" in stderr and "Traceback" not in stderr
    for name in ("best.png", "config.json", "metrics.json", "lora/pytorch_lora_weights.safetensors", "loss.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["stop_reason"] == "interrupted"


def _error(capsys, args) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), captured.err
    return lines[0]


def test_missing_photo(capsys, base_args, tmp_path):
    args = [a if a != base_args[2] else str(tmp_path / "gone.jpg") for a in base_args]
    assert "subject photo not found" in _error(capsys, [*args, "--prompt", "x", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # nothing written for a run that never started


def test_not_an_image(capsys, base_args, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x00" * 100)
    args = [a if a != base_args[2] else str(bad) for a in base_args]
    assert "is not an image" in _error(capsys, [*args, "--prompt", "x", "--out", str(tmp_path / "o")])


def test_unknown_model(capsys, base_args, tmp_path):
    args = [*base_args, "--model", "sdxl-trubo", "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "unknown model 'sdxl-trubo'" in _error(capsys, args)


def test_uncached_hub_id_offline(capsys, base_args, tmp_path):
    args = [*base_args, "--model", "someone/not-cached-model", "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "not in the local Hugging Face cache" in _error(capsys, args)
    assert not (tmp_path / "o").exists()  # a run that fails while loading leaves nothing behind


def test_uncached_similarity_model_offline(capsys, base_args, tmp_path):
    args = [*base_args, "--dino-model", "facebook/dinov2-large", "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "DINO similarity model 'facebook/dinov2-large'" in _error(capsys, args)
    assert not (tmp_path / "o").exists()


def test_bad_config_value(capsys, base_args, tmp_path):
    args = [*base_args, "--grad-steps", "3", "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "grad_steps must be between 1 and num_inference_steps" in _error(capsys, args)


def test_existing_output_folder(capsys, base_args, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert "not empty; pass --overwrite" in _error(capsys, [*base_args, "--prompt", "x", "--out", str(out)])
    # --overwrite only ever deletes a siso run folder
    assert "has no siso config.json; refusing" in _error(
        capsys, [*base_args, "--prompt", "x", "--out", str(out), "--overwrite"]
    )
    assert (out / "mine.txt").read_text() == "keep me"


def test_overwrite_replaces_a_previous_run(capsys, base_args, tmp_path):
    out = tmp_path / "o"
    args = [*base_args, "--prompt", "x", "--max-iters", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    (out / "stale.txt").write_text("old")
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "best.png").is_file()


def test_diverging_run_stops_and_keeps_the_best(capsys, base_args, tmp_path):
    # lr 1e30 blows the weights up after the first step: the loss turns NaN and the run keeps iteration 0.
    out = tmp_path / "o"
    args = [*base_args, "--prompt", "x", "--lr", "1e30", "--max-iters", "5", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "stopped (non-finite loss), best image at iteration 0" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN is written as null
    assert metrics["stop_reason"] == "non-finite loss" and metrics["iterations"][-1]["loss"] is None
    assert (out / "best.png").is_file() and (out / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_lora_folder_without_weights(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["generate", "--lora", str(tmp_path / "empty"), "--prompt", "x", "--out", str(tmp_path / "o")]
    assert "has no pytorch_lora_weights.safetensors" in _error(capsys, args)
