"""``siso generate`` (`siso.cli.generate`): end to end on tiny local models (and its saved subject reused), and
every bad input ends in one clear line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from console import run_siso
from PIL import Image
from safetensors.torch import load_file, save_file

from siso.backbones import load_backbone
from siso.cli import main
from siso.config import LoraSettings
from siso.lora import SUBJECT_FILE, WEIGHTS_FILE, add_lora, save_lora

from .helpers import NOT_A_MODEL, _error, _generate_args, _reuse_args, _truncate


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


# --- damaged files: the error names the file and the fix ---------------------------------------------------------


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


def test_saved_subject_of_another_family(capsys, saved_subjects, model_dirs, tmp_path):
    line = _error(capsys, [*_reuse_args(tmp_path, saved_subjects["sdxl"]), "--model", str(model_dirs["sd"])])
    assert f"{saved_subjects['sdxl']} was learned on {model_dirs['sdxl']} (SDXL family); " in line
    assert f"{model_dirs['sd']} is of the SD family" in line
    assert not (tmp_path / "o").exists()


def test_saved_subject_that_does_not_fit(capsys, saved_subjects, model_dirs, tmp_path):
    # A subject whose record names a model of the right family still fails when its weights meet the model.
    lora = shutil.copytree(saved_subjects["sdxl"], tmp_path / "lora")
    (lora / SUBJECT_FILE).write_text(json.dumps({"model": str(model_dirs["sd"])}))
    line = _error(capsys, _reuse_args(tmp_path))
    assert f"{lora / WEIGHTS_FILE} does not fit this model (size mismatch" in line
    assert "it was learned on another model" in line
    assert not (tmp_path / "o").exists()


def test_saved_subject_still_reloads(capsys, saved_subjects, tmp_path):
    assert main([*_reuse_args(tmp_path, saved_subjects["sd"]), "--quiet"]) == 0


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
