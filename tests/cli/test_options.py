"""The options of a run's settings (`siso.cli.options`), derived from their declarations (`siso.config.fields`): the
parsers of ``generate`` and ``edit`` are exactly what they were (tests/fixtures/parsers.json, written by
`parser_snapshot` before the options were derived), ``eval run`` takes every learning option of ``generate``, and
the flags reach the run's config."""

import json

import pytest
import torch

from siso.backbones import config_for
from siso.cli import build_parser
from siso.cli.eval import run_config
from siso.cli.options import declared_settings, shared_settings
from siso.config import EditConfig, IPAdapterSettings, OptimSettings, SisoConfig
from siso.config.fields import declared

from .helpers import NOT_A_MODEL, _error, _eval_args, _generate_args, _reuse_args
from .parser_snapshot import SNAPSHOT, snapshot

# Options of generate that belong to the command (what it learns and writes), not to the run's settings.
GENERATE_OWN = {
    "help",
    "subject",
    "subject_class",
    "box",
    "lora",
    "prompt",
    "train_prompt",
    "model",
    "num_images",
    "steps",
    "detector",
    "out",
    "overwrite",
    "save_as",
    "library",
    "polish",
    "blend_edge",
    "device",
    "quiet",
}
# eval run's own help texts of these differed from generate's for the same setting (the snapshot, written before
# the options were derived, has them); they are generate's now.
EVAL_RUN_HELP_NOW_GENERATES = {"seed", "dino_model", "ir_model", "dtype"}


def _by_dest(options: list[dict]) -> dict[str, dict]:
    return {option["dest"]: option for option in options}


@pytest.fixture(scope="module")
def parsers() -> dict[str, dict[str, dict]]:
    return {command: _by_dest(options) for command, options in snapshot().items()}


@pytest.fixture(scope="module")
def saved() -> dict[str, dict[str, dict]]:
    return {command: _by_dest(options) for command, options in json.loads(SNAPSHOT.read_text()).items()}


@pytest.mark.parametrize("command", ["generate", "edit", "refine"])
def test_generate_edit_and_refine_take_exactly_the_options_they_took(parsers, saved, command):
    assert sorted(parsers[command]) == sorted(saved[command])
    for dest, option in saved[command].items():
        assert parsers[command][dest] == option, dest


def test_eval_run_keeps_its_options_and_takes_every_learning_option_of_generate(parsers, saved):
    run, before, generate = parsers["eval run"], saved["eval run"], parsers["generate"]
    for dest, option in before.items():
        expected = option
        if dest in EVAL_RUN_HELP_NOW_GENERATES:
            expected = {**option, "help": generate[dest]["help"]}
        assert run[dest] == expected, dest
    learning = set(generate) - GENERATE_OWN
    assert learning >= {"rank", "patience", "grad_steps", "compile", "keep_text_encoders", "negative", "ip_adapter"}
    for dest in learning:
        assert run.get(dest) == generate[dest], dest
    assert set(run) == set(before) | learning  # nothing else is new


def test_every_declared_setting_is_an_option_of_generate(parsers):
    flags = {flag for option in parsers["generate"].values() for flag in option["option_strings"]}
    assert {field.declaration.flag for _, field in declared_settings()} <= flags
    # The form's bounds and labels are declared where the app's page offers the setting.
    assert {field.name: field.declaration.label for field in declared(OptimSettings) if field.declaration.label} == {
        "lr": "Learning rate",
        "max_iters": "Max iterations",
        "seed": "Seed",
    }


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_generate_flags_reach_the_config():
    args = _parse(
        *("generate", "--subject", "dog.png", "--prompt", "a dog", "--out", "o"),
        *("--rank", "8", "--patience", "3", "--lr", "1e-3", "--train-steps", "2", "--grad-steps", "2"),
        *("--text-encoder-lora", "--keep-text-encoders", "--gradient-checkpointing", "--compile"),
        *("--negative", "blur", "--negative", "generic", "--worst-weight", "0.25", "--dino-resolution", "224"),
        *("--ip-adapter", "h94/IP-Adapter:sdxl_models/a.safetensors", "--ip-adapter-scale", "0.7"),
        *("--fast", "--tiny-vae", "madebyollin/taesdxl", "--resolution", "64", "--dtype", "fp32"),
    )
    config = config_for(SisoConfig, "sdxl-turbo", **shared_settings(args, "sdxl-turbo"))
    assert (config.lora.rank, config.lora.train_text_encoder) == (8, True)
    optim = config.optim
    assert (optim.patience, optim.lr, optim.num_inference_steps, optim.grad_steps, optim.seed) == (3, 1e-3, 2, 2, 0)
    assert (config.memory.offload_text_encoders, config.memory.gradient_checkpointing) == (False, True)
    assert config.accel.compile and config.negatives.kinds == ("blur", "generic")
    assert config.compose.worst_weight == 0.25 and config.similarity.dino_resolution == 224
    assert config.ip_adapter == IPAdapterSettings("h94/IP-Adapter", "sdxl_models/a.safetensors", 0.7)
    assert (config.fast.enabled, config.fast.tiny_vae) == (True, "madebyollin/taesdxl")
    assert (config.resolution, config.dtype) == (64, "fp32")


def test_flags_left_out_leave_the_family_defaults():
    args = _parse("generate", "--subject", "dog.png", "--prompt", "a dog", "--out", "o")
    overrides = shared_settings(args, "sana")
    assert overrides["optim"]["lr"] is None and overrides["ip_adapter"] is None
    assert overrides["memory"]["offload_text_encoders"] is True  # --keep-text-encoders left out
    assert config_for(SisoConfig, "sana", **overrides) == config_for(SisoConfig, "sana")


def test_edit_steps_are_its_schedule():
    args = _parse("edit", "--image", "scene.png", "--subject", "dog.png", "--out", "o", "--steps", "8")
    assert "fast" not in shared_settings(args, "sdxl-turbo") and "ip_adapter" not in shared_settings(args, None)
    config = config_for(EditConfig, "sdxl-turbo", **shared_settings(args, "sdxl-turbo", args.steps))
    assert config.optim.num_inference_steps == 8


def _eval_run(suite: str, *extra: str):
    return _parse("eval", "run", "--suite", suite, "--data", "d", "--out", "o", *extra)


def test_eval_run_flags_reach_the_config_it_writes():
    config = run_config(_eval_run("dreambench", "--rank", "8", "--patience", "3", "--compile", "--seed", "5"))
    written = config.to_dict()  # what OUT/config.json holds under "siso"
    assert (written["lora"]["rank"], written["optim"]["patience"], written["optim"]["seed"]) == (8, 3, 5)
    assert written["accel"]["compile"] is True
    edit = run_config(_eval_run("imagenhub-editing", "--rank", "8", "--steps", "8", "--device", "cpu"))
    assert isinstance(edit, EditConfig)
    assert (edit.lora.rank, edit.optim.num_inference_steps, edit.device) == (8, 8, "cpu")


@pytest.mark.parametrize(
    ("suite", "extra", "message"),
    [
        ("dreambench", ["--tiny-vae", "madebyollin/taesd"], "--tiny-vae needs --fast"),
        ("imagenhub-editing", ["--train-steps", "2"], "its schedule is --steps; drop --train-steps"),
        ("imagenhub-editing", ["--fast"], "the fast loss is for generation only"),
        ("dreambench", ["--model", "sana", "--text-encoder-lora"], "sana has no text-encoder LoRA"),
    ],
)
def test_eval_run_refuses_what_its_suite_cannot_take(suite, extra, message):
    with pytest.raises(ValueError, match=message):
        run_config(_eval_run(suite, *extra))


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
