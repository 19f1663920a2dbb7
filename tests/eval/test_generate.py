"""`siso.eval.generate` through `siso eval run` on DreamBench: a LoRA per subject (or per prompt), each learned as a
run (`siso.runs.run.run`) whole or not at all, resumable, sharded over processes, on every backbone family."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from siso.cli import eval as eval_cli
from siso.cli import main
from siso.eval.generate import generate_suite
from siso.eval.score import ITEMS_FILE, read_records
from siso.eval.suites import EvalItem, generated_images, load_dreambench
from siso.losses import GuieNet
from siso.runs.folder import RunFolder

from .helpers import _on_two_processes, _run_args


@pytest.mark.parametrize(("family", "resolution"), [("flux", "32"), ("sana", "64")])
def test_eval_run_on_transformer_backbones(
    dreambench, model_dirs, eval_models, tmp_path, capsys, monkeypatch, family, resolution
):
    configs = []
    generate = eval_cli.generate_suite
    monkeypatch.setattr(eval_cli, "generate_suite", lambda items, out, config, *a, **k: configs.append(config)
                        or generate(items, out, config, *a, **k))  # fmt: skip
    out = tmp_path / "run"
    args = _run_args(dreambench, model_dirs, eval_models, out, "--resolution", resolution, "--limit", "1")
    args[args.index("--model") + 1] = str(model_dirs[family])
    assert main(args) == 0
    assert "| clip_t |" in capsys.readouterr().out
    [item] = load_dreambench(dreambench)[:1]
    images = generated_images(out / "generated", item)
    assert [p.name for p in images] == ["0.png", "1.png"]
    assert Image.open(images[0]).size == (int(resolution),) * 2
    assert json.loads((out / "subjects" / "dog" / "metrics.json").read_text())["stop_reason"] == "max_iters"
    # The family's defaults (FLUX: 1 step; Sana: 20 steps, grad through the last 3, CFG 4.5) drove the run.
    [config] = configs
    optim = config.optim
    expected = {"flux": (1, 1, 0.0), "sana": (20, 3, 4.5)}[family]
    assert (optim.num_inference_steps, optim.grad_steps, optim.guidance_scale) == expected
    assert config.resolution == int(resolution)


def test_eval_run_generates_scores_and_resumes(dreambench, model_dirs, eval_models, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run_args(dreambench, model_dirs, eval_models, out)) == 0
    assert "| clip_t |" in capsys.readouterr().out
    items = load_dreambench(dreambench)
    for item in items:
        assert [p.name for p in generated_images(out / "generated", item)] == ["0.png", "1.png"]
    # two-stage: one LoRA per subject, learned from "a photo of a <class>"
    assert sorted(p.name for p in (out / "subjects").iterdir()) == ["dog", "red_teapot"]
    info = json.loads((out / "subjects" / "dog" / "lora" / "siso_subject.json").read_text())
    assert info["train_prompt"] == "a photo of a dog"
    assert info["photos"] == [str(items[0].subject_image)]  # the first of its two photos: the paper's protocol
    assert json.loads((out / "subjects" / "dog" / "metrics.json").read_text())["stop_reason"] == "max_iters"
    optimization = json.loads((out / "scores" / "summary.json").read_text())["optimization"]
    iterations = optimization[0]
    assert (iterations["metric"], iterations["mean"], iterations["n"]) == ("iterations", 2, 2)  # per subject's LoRA
    assert [r["item"] for r in read_records(out / "scores" / ITEMS_FILE)] == [i.id for i in items]

    # Resume: a lost image is regenerated from the saved LoRA (no new optimization) and matches the original.
    lora_file = out / "subjects" / "dog" / "lora" / "pytorch_lora_weights.safetensors"
    stamp = lora_file.stat().st_mtime_ns
    lost = out / "generated" / "dog" / "01" / "1.png"
    before = np.asarray(Image.open(lost))
    lost.unlink()
    assert main(_run_args(dreambench, model_dirs, eval_models, out)) == 0
    assert lora_file.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(Image.open(lost)), before)


def test_eval_run_per_prompt_protocol_and_limit(dreambench, model_dirs, eval_models, tmp_path):
    out = tmp_path / "run"
    assert main(_run_args(dreambench, model_dirs, eval_models, out, "--protocol", "per-prompt", "--limit", "3")) == 0
    units = sorted(str(p.relative_to(out / "subjects")) for p in (out / "subjects").glob("*/*") if p.is_dir())
    assert units == ["dog/00", "dog/01", "red_teapot/00"]  # one optimization per item, first 3 items only
    info = json.loads((out / "subjects" / "dog" / "01" / "lora" / "siso_subject.json").read_text())
    assert info["train_prompt"] == "a dog wearing a red hat"
    assert len(read_records(out / "scores" / ITEMS_FILE)) == 3


def test_eval_run_takes_the_guie_checkpoint_file_for_the_loss_and_the_ir_metric(
    dreambench, model_dirs, eval_models, tmp_path, capsys
):
    # A random GUIE model in the Kaggle file's layout (DataParallel's module., the tower under backbone.).
    torch.manual_seed(0)
    net = GuieNet(width=80, layers=1, patch=14, grid=24, mlp_width=32, embed_dim=8, out_dim=4)
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.2)
    state = {"module." + k.replace("visual.", "backbone.", 1): v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "ir_features.pth")
    out = tmp_path / "run"
    args = _run_args(dreambench, model_dirs, eval_models, out, "--limit", "1")
    args[args.index("--ir-model") + 1] = str(tmp_path / "ir_features.pth")
    args[args.index("--metrics") + 1] = "ir"
    args[args.index("--metric-model") : args.index("--quiet")] = [
        "--metric-model",
        f"ir={tmp_path / 'ir_features.pth'}",
    ]
    assert main(args) == 0  # the CLIP stand-in's loader would refuse a file
    assert "| ir |" in capsys.readouterr().out


def test_eval_run_on_two_processes_matches_one(dreambench, model_dirs, eval_models, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_run_args(dreambench, model_dirs, eval_models, one)) == 0
    proc = _on_two_processes(_run_args(dreambench, model_dirs, eval_models, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each subject is learned by one process the same way; the launcher runs each process on one thread, and the
    # different float summation order can move a pixel by one level, no more.
    for item in load_dreambench(dreambench):
        for a, b in zip(
            generated_images(one / "generated", item), generated_images(two / "generated", item), strict=True
        ):
            diff = np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int))
            assert diff.max() <= 1, a
    s1, s2 = (json.loads((d / "scores" / "summary.json").read_text())["metrics"] for d in (one, two))
    assert [(r["metric"], r["n"]) for r in s1] == [(r["metric"], r["n"]) for r in s2]
    assert [r["mean"] for r in s1] == pytest.approx([r["mean"] for r in s2], abs=1e-3)


def test_a_unit_is_a_run_and_an_interrupted_one_is_learned_again(make_config, subject_path, tmp_path, monkeypatch):
    item = EvalItem("dog/00", "dog", "dog", "a dog in the snow", subject_path, (subject_path,))
    config = make_config(max_iters=2)
    out = tmp_path / "run"
    unit = out / "subjects" / "dog"

    # Ctrl-C at the second iteration: the run saves its best so far, and the unit's folder is removed.
    save_iteration = RunFolder.save_iteration

    def interrupted(folder, iteration, image):
        if iteration == 1:
            raise KeyboardInterrupt
        save_iteration(folder, iteration, image)

    monkeypatch.setattr(RunFolder, "save_iteration", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_suite([item], out, config, progress=False)
    assert list((out / "subjects").iterdir()) == []  # neither the unit nor its partial folder
    assert not (out / "generated" / "dog" / "00" / "0.png").exists()

    # The rerun learns the unit again, as a run: its run folder with the run's config.json and loss plot.
    monkeypatch.setattr(RunFolder, "save_iteration", save_iteration)
    generate_suite([item], out, config, progress=False)
    assert sorted(p.name for p in (out / "subjects").iterdir()) == ["dog"]
    metrics = json.loads((unit / "metrics.json").read_text())
    assert metrics["complete"] and metrics["stop_reason"] == "max_iters" and len(metrics["iterations"]) == 2
    run_config = json.loads((unit / "config.json").read_text())
    assert run_config["photos"] == [str(subject_path)] and run_config["siso"]["train_prompt"] == "a photo of a dog"
    info = json.loads((unit / "lora" / "siso_subject.json").read_text())
    assert info["photos"] == [str(subject_path)] and info["train_prompt"] == "a photo of a dog"
    assert all((unit / name).is_file() for name in ("best.png", "loss.png"))
    assert not (unit / "iterations").exists() and not (unit / "iterations.png").exists()  # a suite keeps no frames

    # A lost image is drawn again from the saved LoRA: the unit is not learned again.
    lost = out / "generated" / "dog" / "00" / "0.png"
    before = np.asarray(Image.open(lost), dtype=int)
    lost.unlink()

    def no_learning(*args, **kwargs):
        raise AssertionError("a saved unit was learned again")

    monkeypatch.setattr("siso.runs.run.optimize_generation", no_learning)
    generate_suite([item], out, config, progress=False)
    assert np.abs(np.asarray(Image.open(lost), dtype=int) - before).max() <= 1
