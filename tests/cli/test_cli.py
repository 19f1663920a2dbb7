"""The `siso` command: end to end on tiny local models, and every bad input ends in one clear line."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from console import OFFLINE, SISO, run_siso
from PIL import Image
from safetensors.torch import load_file, save_file

from siso.backbones import load_backbone
from siso.cli import main
from siso.config import LoraSettings
from siso.lora import SUBJECT_FILE, WEIGHTS_FILE, add_lora, save_lora


@pytest.fixture
def base_args(model_dirs, subject_path, similarity_args):
    return [
        "generate",
        "--subject",
        str(subject_path),
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--lr",
        "1e-2",
    ]


def test_console_script_end_to_end_and_reuse(base_args, tmp_path):
    out = tmp_path / "run"
    proc = run_siso(
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
    seconds = sorted(h["seconds"] for h in metrics["iterations"])
    assert metrics["seconds_per_iteration"] == (seconds[1] + seconds[2]) / 2  # the median
    assert metrics["peak_memory_kind"] == "process RSS" and 0 < metrics["peak_memory_gb"] < 24
    cost = f"siso: 4 iterations, {metrics['seconds_per_iteration']:.2f} s/iteration (median), peak memory "
    assert cost + f"{metrics['peak_memory_gb']:.2f} GB (process RSS)" in proc.stdout
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
    assert config["siso"]["dtype"] == "fp32"  # --dtype auto, on a CPU
    assert config["command"][:2] == ["siso", "generate"]

    # Stage two: the saved subject regenerates the same images without optimizing.
    again = tmp_path / "again"
    proc = run_siso(
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
    proc = run_siso(["--help"])
    assert proc.returncode == 0 and "usage: siso" in proc.stdout
    assert "requires torchvision" not in proc.stderr and proc.stderr == ""


def test_sigterm_keeps_best_so_far(base_args, tmp_path):
    out = tmp_path / "run"
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
        env=OFFLINE,
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


def test_overwrite_replaces_a_previousrun_siso(capsys, base_args, tmp_path):
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


# --- bad input, swept option by option: one "siso: error:" line, exit 2, decided before any model loads -------

NOT_A_MODEL = "/nonexistent/model"  # had anything loaded before the check, this would be the error


def _generate_args(subject_path, tmp_path):
    return ["generate", "--subject", str(subject_path), "--prompt", "x", "--out", str(tmp_path / "o")]


def _reuse_args(tmp_path):
    return ["generate", "--lora", str(tmp_path / "lora"), "--prompt", "x", "--out", str(tmp_path / "o")]


# (extra arguments, what the error says); "--lr=-inf": argparse takes "--lr -inf" for two options (its own error)
GENERATE_NUMBERS = [
    *[
        ([f"--{opt}={v}"], f"--{opt} must be a finite number, got {v}")
        for opt in ("lr", "min-improvement", "guidance-scale")
        for v in ("nan", "inf", "-inf")
    ],
    (["--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    (["--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
    (["--min-improvement", "1"], "min_improvement is a fraction in [0, 1), got 1.0"),
    (["--min-improvement", "-0.1"], "min_improvement is a fraction in [0, 1), got -0.1"),
    (["--guidance-scale", "-1"], "guidance_scale must be a finite number >= 0, got -1.0"),
    *[
        ([f"--{opt}", "0"], f"--{opt} must be >= 1, got 0")
        for opt in (
            "max-iters",
            "patience",
            "rank",
            "num-images",
            "steps",
            "train-steps",
            "grad-steps",
            "resolution",
            "dino-resolution",
            "ir-resolution",
        )
    ],
    (["--max-iters", "-5"], "--max-iters must be >= 1, got -5"),
    (["--grad-steps", "2"], "grad_steps must be between 1 and num_inference_steps (1), got 2"),
    (["--resolution", "12"], "resolution must be a positive multiple of 8, got 12"),
    (["--dino-resolution", "10"], "dino_resolution must be >= 14 pixels, got 10"),
    (["--ir-resolution", "10"], "ir_resolution must be >= 14 pixels, got 10"),
    # torch.Generator.manual_seed takes -2**63 .. 2**64 - 1 (negative seeds wrap); the images use SEED..SEED+K-1
    ([f"--seed={-(2**63) - 1}"], "--seed must be between -9223372036854775808 and 18446744073709551615"),
    (["--seed", str(2**64)], "--seed must be between -9223372036854775808 and 18446744073709551615"),
    (["--seed", str(2**64 - 1), "--num-images", "2"], "--seed + --num-images - 1 must be between"),
]


@pytest.mark.parametrize(("extra", "message"), GENERATE_NUMBERS)
@pytest.mark.parametrize("mode", ["subject", "lora"])
def test_bad_numbers_generate(capsys, subject_path, tmp_path, mode, extra, message):
    # --lora does not optimize, but a bad value of an optimization option is still an error
    args = _generate_args(subject_path, tmp_path) if mode == "subject" else _reuse_args(tmp_path)
    assert message in _error(capsys, [*args, "--model", NOT_A_MODEL, *extra])
    assert not (tmp_path / "o").exists()


def test_negative_seed_is_accepted(capsys, subject_path, tmp_path):
    # torch takes seed -1 as 2**64 - 1: the run goes on to load the model
    assert "unknown model" in _error(capsys, [*_generate_args(subject_path, tmp_path), "--model", "x", "--seed=-1"])


@pytest.mark.parametrize(
    ("extra", "error"),
    [(["--max-iters", "nan"], "argument --max-iters: invalid int value: 'nan'"), (["--rank", "1.5"], "invalid int")],
)
def test_non_integer_counts_are_argparse_errors(capsys, subject_path, tmp_path, extra, error):
    with pytest.raises(SystemExit) as exit_info:
        main([*_generate_args(subject_path, tmp_path), *extra])
    assert exit_info.value.code == 2 and error in capsys.readouterr().err


def _eval_args(command, tmp_path):
    args = ["eval", command, "--suite", "dreambench", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]
    return [*args, "--generated", str(tmp_path / "g")] if command == "score" else [*args, "--model", NOT_A_MODEL]


EVAL_NUMBERS = [
    ("score", ["--limit", "0"], "--limit must be >= 1, got 0"),
    ("run", ["--limit", "-1"], "--limit must be >= 1, got -1"),
    *[("run", [f"--{opt}", "0"], f"--{opt} must be >= 1, got 0") for opt in ("num-images", "steps", "max-iters")],
    *[("run", [f"--lr={v}"], f"--lr must be a finite number, got {v}") for v in ("nan", "inf", "-inf")],
    ("run", ["--seed", str(2**64)], "--seed must be between"),
    ("run", [f"--seed={-(2**63) - 1}"], "--seed must be between"),
    ("run", ["--seed", str(2**64 - 2), "--num-images", "3"], "--seed + --num-images - 1 must be between"),
]


@pytest.mark.parametrize(("command", "extra", "message"), EVAL_NUMBERS)
def test_bad_numbers_eval(capsys, tmp_path, command, extra, message):
    assert message in _error(capsys, [*_eval_args(command, tmp_path), *extra])  # not the missing --data


def _device_cases():
    cases = [("banana", "device 'banana' is not a torch device; usable here: cpu"), ("", "is not a torch device")]
    if not torch.cuda.is_available():
        cases += [("cuda", "device 'cuda' cannot be used"), ("cuda:0", "device 'cuda:0' cannot be used")]
    if torch.cuda.device_count() < 8:
        cases.append(("cuda:7", "device 'cuda:7' cannot be used"))
    if not torch.backends.mps.is_available():
        cases.append(("mps", "device 'mps' cannot be used (MPS is not available)"))
    return cases


@pytest.mark.parametrize(("device", "message"), _device_cases())
@pytest.mark.parametrize("command", ["generate", "generate --lora", "eval score", "eval run"])
def test_unusable_device(capsys, subject_path, tmp_path, command, device, message):
    args = {
        "generate": [*_generate_args(subject_path, tmp_path), "--model", NOT_A_MODEL],
        "generate --lora": [*_reuse_args(tmp_path), "--model", NOT_A_MODEL],
        "eval score": _eval_args("score", tmp_path),
        "eval run": _eval_args("run", tmp_path),
    }[command]
    line = _error(capsys, [*args, "--device", device])
    assert message in line and "usable here: cpu" in line


@pytest.mark.parametrize("command", ["generate", "eval score", "eval fetch"])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_output_folder_that_cannot_be(capsys, subject_path, tmp_path, command, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    args = {
        "generate": [*_generate_args(subject_path, tmp_path), "--model", NOT_A_MODEL],
        "eval score": _eval_args("score", tmp_path),
        "eval fetch": ["eval", "fetch", "--suite", "dreambench"],
    }[command]
    message = "exists and is not a folder" if where == "file" else f"{tmp_path / 'file'} is a file"
    assert message in _error(capsys, [*args, "--out", str(out)])


# --- damaged files: the error names the file and the fix ---------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("model", "file", "option", "damage"),
    [
        ("sd", "model_index.json", "--model", _truncate),
        ("sd", "unet/diffusion_pytorch_model.safetensors", "--model", lambda p: p.write_bytes(b"garbage" * 9)),
        ("sd", "text_encoder/model.safetensors", "--model", _truncate),
        ("sd", "tokenizer/tokenizer.json", "--model", _truncate),
        ("dino", "config.json", "--dino-model", _truncate),
        ("dino", "model.safetensors", "--dino-model", _truncate),
        ("clip", "config.json", "--ir-model", lambda p: p.write_text("")),
        ("clip", "model.safetensors", "--ir-model", lambda p: p.write_bytes(b"garbage" * 9)),
    ],
)
def test_damaged_model_folder(capsys, base_args, model_dirs, tmp_path, model, file, option, damage):
    folder = shutil.copytree(model_dirs[model], tmp_path / model)
    damage(folder / file)
    line = _error(capsys, [*base_args, option, str(folder), "--prompt", "x", "--out", str(tmp_path / "o")])
    assert f"{folder / file} is damaged" in line and "Fix: download or save the model again" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "model", "message"),
    [
        ("--ir-model", "dino", "is a dinov2 model, not CLIP"),
        ("--dino-model", "clip", "is a clip_vision_model model, not DINOv2"),
    ],
)
def test_similarity_model_of_another_architecture(capsys, base_args, model_dirs, tmp_path, option, model, message):
    assert message in _error(
        capsys, [*base_args, option, str(model_dirs[model]), "--prompt", "x", "--out", str(tmp_path / "o")]
    )


@pytest.fixture(scope="module")
def saved_subjects(model_dirs, tmp_path_factory) -> dict[str, Path]:
    """A saved subject (zero-initialised LoRA) per tiny backbone."""
    root = tmp_path_factory.mktemp("subjects")
    saved = {}
    for family in ("sd", "sdxl"):
        backbone = load_backbone(str(model_dirs[family]), device="cpu")
        add_lora(backbone, LoraSettings())
        saved[family] = save_lora(backbone, root / family, model=str(model_dirs[family]))
    return saved


def _rename_keys(old: str, new: str):
    def rename(path: Path) -> None:
        save_file({k.replace(old, new): v for k, v in load_file(path).items()}, path)

    return rename


@pytest.mark.parametrize(
    ("file", "damage", "message", "model"),
    [
        # found before the model loads: a model that is not there is not what the error is about
        (WEIGHTS_FILE, _truncate, f"{WEIGHTS_FILE} is damaged", NOT_A_MODEL),
        (WEIGHTS_FILE, lambda p: p.write_bytes(b"garbage" * 9), f"{WEIGHTS_FILE} is damaged", NOT_A_MODEL),
        (WEIGHTS_FILE, lambda p: save_file({}, p), f"{WEIGHTS_FILE} holds no LoRA weights", NOT_A_MODEL),
        (SUBJECT_FILE, _truncate, f"{SUBJECT_FILE} is damaged", None),
        (SUBJECT_FILE, lambda p: p.write_text("[]"), f"{SUBJECT_FILE} is not a JSON object", None),
        # found when the LoRA meets the model
        (WEIGHTS_FILE, _rename_keys("unet.", "other."), "only 0 of its 64 LoRA tensors match layers of this", None),
        (WEIGHTS_FILE, _rename_keys("unet.", "unet.renamed_"), "does not fit this model", None),
    ],
)
def test_damaged_saved_subject(capsys, saved_subjects, tmp_path, file, damage, message, model):
    lora = shutil.copytree(saved_subjects["sd"], tmp_path / "lora")
    damage(lora / file)
    line = _error(capsys, [*_reuse_args(tmp_path), *(["--model", model] if model else [])])
    assert f"{lora / file}" in line and message in line
    assert "learn the subject again" in line or "--model" in line
    assert not (tmp_path / "o").exists()


def test_saved_subject_of_another_backbone(capsys, saved_subjects, model_dirs, tmp_path):
    line = _error(
        capsys, [*_reuse_args(tmp_path), "--lora", str(saved_subjects["sdxl"]), "--model", str(model_dirs["sd"])]
    )
    assert f"{saved_subjects['sdxl'] / WEIGHTS_FILE} does not fit this model (size mismatch" in line
    assert "it was learned on another model" in line
    assert not (tmp_path / "o").exists()


def test_saved_subject_still_reloads(capsys, saved_subjects, tmp_path):
    assert main([*_reuse_args(tmp_path), "--lora", str(saved_subjects["sd"]), "--quiet"]) == 0


def test_backbone_family_defaults_apply_and_flags_override(monkeypatch, base_args, tmp_path):
    """A family's own settings (`Backbone.defaults`, e.g. Sana's lr 8e-4 and 20 steps) are the defaults; flags given
    on the command line win; config.json records what was used."""
    from siso.backbones import SDBackbone

    monkeypatch.setattr(SDBackbone, "defaults", {"optim": {"lr": 5e-3, "patience": 3, "num_inference_steps": 2}})
    args = [a for a in base_args if a not in ("--lr", "1e-2")]
    assert main([*args, "--prompt", "a dog", "--max-iters", "2", "--quiet", "--out", str(tmp_path / "a")]) == 0
    optim = json.loads((tmp_path / "a" / "config.json").read_text())["siso"]["optim"]
    assert (optim["lr"], optim["patience"], optim["num_inference_steps"], optim["max_iters"]) == (5e-3, 3, 2, 2)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["job"]["num_inference_steps"] == 2
    given = ["--lr", "1e-3", "--train-steps", "1", "--max-iters", "2", "--quiet"]
    assert main([*args, "--prompt", "a dog", *given, "--out", str(tmp_path / "b")]) == 0
    optim = json.loads((tmp_path / "b" / "config.json").read_text())["siso"]["optim"]
    assert (optim["lr"], optim["patience"], optim["num_inference_steps"]) == (1e-3, 3, 1)
