"""`siso.eval.edit` through `siso eval run` on an editing suite: one edit per item from the stock model,
resumable, items with nothing detected skipped and named, sharded over processes."""

import json

import numpy as np
import torch
from PIL import Image

from siso.cli import main
from siso.config import EditConfig, OptimSettings, SimilaritySettings
from siso.eval.edit import edit_suite
from siso.eval.score import ITEMS_FILE, read_records
from siso.eval.suites import SUITES, generated_images

from .helpers import _edit_args, _on_two_processes


def test_eval_run_edits_scores_and_resumes(
    editing_suite, edit_masks, model_dirs, lpips_weights, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    scoring = ["--metrics", "mse,lpips_bg", "--metric-model", f"lpips_bg={lpips_weights}"]
    assert main(_edit_args(editing_suite, model_dirs, edit_masks, out, *scoring)) == 0
    assert "| lpips_bg |" in capsys.readouterr().out
    items = SUITES["imagenhub-editing"](editing_suite)
    sizes = {}
    for item in items:
        assert [p.name for p in generated_images(out / "generated", item)] == ["0.png"]
        sizes[item.id] = Image.open(out / "generated" / item.id / "0.png").size
        metrics = json.loads((out / "subjects" / item.id / "metrics.json").read_text())
        assert metrics["inversion"]["psnr"] > 0 and metrics["iterations"]
        assert Image.open(out / "subjects" / item.id / "best.png").size == sizes[item.id]
    # The edits are at the tiny backbone's 32 px, cropped to each photo's aspect (96x80 and 64x64).
    assert sizes == {"duck_toy/3": (32, 27), "duck_toy/4": (32, 32)}
    assert json.loads((out / "subjects" / "duck_toy" / "3" / "metrics.json").read_text())["mask"] == "detected"
    assert json.loads((out / "subjects" / "duck_toy" / "4" / "metrics.json").read_text())["mask"].endswith("4.png")
    records = read_records(out / "scores" / ITEMS_FILE)
    assert [r["item"] for r in records] == [i.id for i in items]
    assert all(r["metrics"]["lpips_bg"] >= 0 for r in records)
    optimization = json.loads((out / "scores" / "summary.json").read_text())["optimization"]
    assert [(r["metric"], r["n"]) for r in optimization] == [("iterations", 2), ("seconds", 2)]  # one per edit

    # Each edit starts from the stock model: item 4 edited alone (never after item 3) gives the same image.
    config = EditConfig(
        model=str(model_dirs["sd"]),
        similarity=SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"])),
        optim=OptimSettings(lr=1e-2, max_iters=2, num_inference_steps=4),
    )
    alone, skipped = edit_suite(items[1:], tmp_path / "alone", config, progress=False)
    assert skipped == {}
    assert np.array_equal(
        np.asarray(Image.open(alone / "duck_toy" / "4" / "0.png")),
        np.asarray(Image.open(out / "generated" / "duck_toy" / "4" / "0.png")),
    )

    # Resume: finished items are not edited again.
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("generated/**/0.png"), *out.glob("subjects/**/*.json")]}

    def no_edit(*args, **kwargs):
        raise AssertionError("a finished item was edited again")

    monkeypatch.setattr("siso.runs.run.edit_subject", no_edit)
    assert main(_edit_args(editing_suite, model_dirs, edit_masks, out, *scoring)) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_eval_run_skips_and_names_an_edit_item_where_nothing_is_detected(
    editing_suite, edit_masks, model_dirs, tmp_path, capsys
):
    out = tmp_path / "run"
    args = _edit_args(editing_suite, model_dirs, edit_masks, out, "--limit", "1", "--box-threshold", "1.0")
    assert main([*args, "--metrics", "mse"]) == 2  # no score passes 1.0
    err = capsys.readouterr().err
    assert "skipped duck_toy/3: no 'duck toy' detected" in err and "masks/3.png" in err
    assert "1 of 1 items have no images" in err
    assert (out / "subjects" / "duck_toy" / "3" / "skipped.txt").is_file()
    assert not (out / "generated" / "duck_toy" / "3").exists()


def test_eval_run_edits_on_two_processes_like_one(editing_suite, edit_masks, model_dirs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # The launcher runs each process on one thread. ReNoise's noise regularisation amplifies a change in float
    # summation order far beyond a pixel level on the random tiny model, so the single process uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_edit_args(editing_suite, model_dirs, edit_masks, one, "--metrics", "mse")) == 0
    finally:
        torch.set_num_threads(threads)
    proc = _on_two_processes(_edit_args(editing_suite, model_dirs, edit_masks, two, "--metrics", "mse"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| metric |") == 1
    for item in SUITES["imagenhub-editing"](editing_suite):
        a, b = (np.asarray(Image.open(d / "generated" / item.id / "0.png")) for d in (one, two))
        assert np.array_equal(a, b), item.id
    assert [r["item"] for r in read_records(two / "scores" / ITEMS_FILE)] == ["duck_toy/3", "duck_toy/4"]
