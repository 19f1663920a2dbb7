"""``siso eval`` (`siso.cli.eval`): ``eval score`` end to end, bad input to ``eval score`` and ``eval run`` (the
dreambench-refine suite's too) in one line, decided before any model loads, and the refine settings reaching only the
refine suite's runs."""

import shutil
from pathlib import Path

import pytest

from siso.backbones import load_backbone
from siso.cli import build_parser, main
from siso.cli.eval import run_config
from siso.config import REFINE_STRENGTH, EditConfig, EditSettings, LoraSettings, RefineConfig, RefineSettings
from siso.eval.suites import load_dreambench
from siso.lora import WEIGHTS_FILE, add_lora, save_lora

from ..eval.helpers import _generate, _run_args, _to_refine
from .helpers import NOT_A_MODEL, _error, _eval_args


def test_eval_score_cli(dreambench, eval_models, tmp_path, capsys):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")

    def args(data=dreambench, metrics="dino,mse"):
        return [
            "eval",
            "score",
            "--suite",
            "dreambench",
            "--data",
            str(data),
            "--generated",
            str(generated),
            "--out",
            str(tmp_path / "scores"),
            "--metrics",
            metrics,
            "--metric-model",
            f"dino={eval_models['dino']}",
            "--quiet",
        ]

    assert main(args()) == 0
    out = capsys.readouterr().out
    assert "| dino |" in out and "| mse |" in out
    assert main(args(metrics="dino,fid_typo")) == 2
    assert "unknown metric(s) fid_typo" in capsys.readouterr().err
    assert main(args(data=tmp_path)) == 2
    assert "not a DreamBench folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-images", "2"], "one edit per item, so --num-images must be 1"),
        (["--protocol", "per-prompt"], "each item gets its own LoRA; drop --protocol"),
    ],
)
def test_eval_run_refuses_generation_options_on_editing_suites(editing_suite, tmp_path, capsys, extra, message):
    args = ["eval", "run", "--suite", "imagenhub-editing", "--data", str(editing_suite), "--out", str(tmp_path / "o")]
    assert main([*args, *extra]) == 2
    assert f"imagenhub-editing is an editing suite: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


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


def _score_args(dreambench, tmp_path, *extra):
    args = ["eval", "score", "--suite", "dreambench", "--data", str(dreambench), "--out", str(tmp_path / "scores")]
    return [*args, "--generated", str(_generate(load_dreambench(dreambench), tmp_path / "generated")), *extra]


def test_eval_score_bad_inputs(dreambench, eval_models, tmp_path, capsys):
    damaged = shutil.copytree(eval_models["dino"], tmp_path / "dino")
    (damaged / "model.safetensors").write_bytes(b"garbage")
    args = _score_args(dreambench, tmp_path, "--metrics", "dino", "--metric-model", f"dino={damaged}")
    line = _error(capsys, args)
    assert f"{damaged / 'model.safetensors'} is damaged" in line and "Fix: download or save the model again" in line
    args = _score_args(dreambench, tmp_path / "2", "--metrics", "mse", "--crop", str(tmp_path / "no-detector"))
    assert f"subject detector directory {tmp_path / 'no-detector'} does not exist" in _error(capsys, args)
    assert "--metrics names no metric" in _error(capsys, _score_args(dreambench, tmp_path / "3", "--metrics", " , "))


def _saved_lora(out: Path, family_dir: str, damage=None) -> Path:
    """A saved subject for the unit "dog" of an `eval run` folder, as an earlier run leaves it."""
    backbone = load_backbone(family_dir, device="cpu")
    add_lora(backbone, LoraSettings())
    lora = save_lora(backbone, out / "subjects" / "dog" / "lora", model="x")
    if damage:
        damage(lora / WEIGHTS_FILE)
    return lora


def test_eval_run_refuses_a_damaged_saved_lora_before_loading(dreambench, model_dirs, eval_models, tmp_path, capsys):
    out = tmp_path / "run"
    lora = _saved_lora(out, str(model_dirs["sd"]), lambda p: p.write_bytes(p.read_bytes()[:100]))
    args = [*_run_args(dreambench, model_dirs, eval_models, out), "--model", "/nonexistent/model"]
    line = _error(capsys, args)
    assert f"{lora / WEIGHTS_FILE} is damaged" in line and f"delete {lora} and learn the subject again" in line


def test_eval_run_refuses_a_saved_lora_of_another_model(dreambench, model_dirs, eval_models, tmp_path, capsys):
    out = tmp_path / "run"
    lora = _saved_lora(out, str(model_dirs["sdxl"]))
    line = _error(capsys, _run_args(dreambench, model_dirs, eval_models, out))  # --model: the tiny SD
    assert f"{lora / WEIGHTS_FILE} does not fit this model" in line


def test_eval_run_checks_optimization_values(dreambench, model_dirs, eval_models, tmp_path, capsys):
    args = [*_run_args(dreambench, model_dirs, eval_models, tmp_path / "run"), "--lr", "0", "--model", "/no/model"]
    assert "lr must be a finite number > 0, got 0.0" in _error(capsys, args)


def _refine_cli(dreambench, model, tmp_path, *extra, suite="dreambench-refine"):
    args = ["eval", "run", "--suite", suite, "--data", str(dreambench), "--out", str(tmp_path / "o")]
    return [*args, "--model", str(model), *extra]


REFINE_REFUSALS = [
    ([], "dreambench-refine refines another method's images: give them with --from DIR (DIR/<item id>/<k>.png)"),
    (["--from", "{file}"], "is not a folder of images laid out as DIR/<item id>/<k>.png"),
    (["--from", "{some}"], "lacks the images of 2 of 4 items (first: {some}/dog/01 has 0 of 1)"),
    (["--from", "{some}", "--limit", "1", "--num-images", "2"], "(first: {some}/dog/00 has 1 of 2)"),
    (["--from", "{some}", "--protocol", "per-prompt"], "refines each image with its own LoRA; drop --protocol"),
    (["--from", "{some}", "--ip-adapter", "h94/IP-Adapter"], "drop --ip-adapter"),
    (["--from", "{some}", "--crop"], "drop --reference and --crop"),
    (["--from", "{some}", "--metrics", "dino,mse"], "dreambench-refine is not scored with mse"),
    (["--from", "{some}", "--metrics", "dino,lpips"], "lpips needs the LPIPS weights"),
]


@pytest.mark.parametrize(("extra", "message"), REFINE_REFUSALS)
def test_eval_run_refuses_bad_refine_input_in_one_line_writing_nothing(
    dreambench, model_dirs, tmp_path, capsys, extra, message
):
    (tmp_path / "file").write_text("x")
    some = _to_refine(load_dreambench(dreambench)[::2], tmp_path / "some")  # dog/00 and red_teapot/00 only
    paths = {"file": tmp_path / "file", "some": some}
    args = _refine_cli(dreambench, model_dirs["sd"], tmp_path, *(arg.format(**paths) for arg in extra))
    line = _error(capsys, args)
    assert message.format(**paths) in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "x"], "--from is dreambench-refine's (the images it refines); dreambench takes none"),
        (["--region", "all"], "--region is dreambench-refine's (the images it refines); dreambench takes none"),
        (["--strength", "0.5", "--check-model", "x"], "--strength, --check-model: settings of dreambench-refine's"),
    ],
)
def test_eval_run_refuses_refine_options_on_other_suites(dreambench, tmp_path, capsys, extra, message):
    assert message in _error(capsys, _refine_cli(dreambench, NOT_A_MODEL, tmp_path, *extra, suite="dreambench"))
    assert not (tmp_path / "o").exists()


def test_refine_settings_reach_the_refine_suite_and_leave_the_editing_suite_its_defaults():
    def config(suite, *extra):
        args = ["eval", "run", "--suite", suite, "--data", "d", "--out", "o", "--model", "sdxl-turbo", *extra]
        return run_config(build_parser().parse_args(args))

    refine = config("dreambench-refine", "--from", "x")
    assert isinstance(refine, RefineConfig) and refine.refine == RefineSettings()
    assert (refine.edit.strength, refine.inversion.method, refine.optim.num_inference_steps) == (
        REFINE_STRENGTH,
        "renoise",
        4,
    )
    given = ("--strength", "0.25", "--structure-weight", "0", "--check-model", "c", "--composite", "--steps", "8")
    refine = config("dreambench-refine", "--from", "x", *given, "--inversion", "ddim")
    assert (refine.edit.strength, refine.refine.structure_weight, refine.refine.check_model) == (0.25, 0, "c")
    assert refine.edit.composite and refine.inversion.method == "ddim" and refine.optim.num_inference_steps == 8
    edit = config("imagenhub-editing")
    assert type(edit) is EditConfig and edit.edit == EditSettings() and edit.inversion.method == "renoise"
