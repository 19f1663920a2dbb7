"""`siso.eval.refine` through `siso eval run --suite dreambench-refine`: another method's images refined as runs, each
scored before and after, resumable (an interrupted item leaves nothing), items skipped where nothing is detected,
sharded over processes."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiny
from diffusers import UNet2DConditionModel
from PIL import Image

from siso.cli import main
from siso.eval.refine import images_to_refine
from siso.eval.suites import load_dreambench
from siso.runs.folder import RunFolder

from ..test_docs import ROOT, fenced_blocks
from .helpers import FOUND_SEEDS, _on_two_processes, _refine_args, _to_refine

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


@pytest.fixture(scope="module")
def finders(tmp_path_factory) -> list[str]:
    """--detector and --segmenter: the tiny Grounding DINO and SAM."""
    root = tmp_path_factory.mktemp("finders")
    detector, segmenter = tiny.make_grounding_dino(root / "gd"), tiny.make_sam(root / "sam")
    return ["--detector", str(detector), "--segmenter", str(segmenter)]


def _records(out):
    return [json.loads(line) for line in (out / "scores" / "items.jsonl").read_text().splitlines()]


def test_eval_run_refines_scores_and_resumes(
    dreambench, model_dirs, eval_models, lpips_weights, finders, tmp_path, capsys, monkeypatch
):
    items = load_dreambench(dreambench)[:2]
    source = _to_refine(items, tmp_path / "other", per_item=2, seeds=FOUND_SEEDS)
    out = tmp_path / "run"
    scoring = ["--metrics", "dino,clip_i,clip_t,lpips", "--metric-model", f"lpips={lpips_weights}"]
    args = _refine_args(dreambench, source, model_dirs, eval_models, out, "--limit", "2", "--num-images", "2")
    assert main([*args, *finders, *scoring]) == 0
    summary = capsys.readouterr().out
    assert "| metric | before | after | gain | gain s.d. | gain 95% CI | items |" in summary
    for row in ("dino", "dino_region", "clip_i", "clip_i_region", "clip_t"):
        assert f"| {row} |" in summary
    assert "| lpips (refined to input) |" in summary and "| psnr_bg (dB, outside the region) |" in summary
    assert "percentile bootstrap" in summary
    records = _records(out)
    assert [r["item"] for r in records] == ["dog/00", "dog/01"]
    for record, item in zip(records, items, strict=True):
        assert record["images"] == [f"{item.id}/0.png", f"{item.id}/1.png"]
        assert record["gain"]["dino"] == pytest.approx(record["after"]["dino"] - record["before"]["dino"])
        assert record["iterations"] == 2 and record["lpips"] >= 0 and record["psnr_bg"] > 0
        for k, image in enumerate(record["per_image"]):
            assert image["region"] == "detected dog"  # the item's class, found in the image
            x0, y0, x1, y1 = image["box"]
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96 and (x1 - x0) * (y1 - y0) < 96 * 96
            run = out / "subjects" / item.id / str(k)
            assert json.loads((run / "config.json").read_text())["prompt"] == item.prompt
            refined = Image.open(out / "generated" / item.id / f"{k}.png")
            assert refined.size == (96, 96)  # the input's
            assert np.array_equal(np.asarray(refined), np.asarray(Image.open(run / "best.png")))
    gains = json.loads((out / "scores" / "summary.json").read_text())["gains"]
    dino = next(row for row in gains if row["metric"] == "dino")
    assert dino["gain_ci"][0] <= dino["gain"] <= dino["gain_ci"][1] and dino["n"] == 2

    # Resume: finished items are not refined again; a metric asked now is scored from their run folders.
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob("generated/**/*.png"), *out.glob("subjects/*/*/*/*.json")]}

    def no_refine(*args, **kwargs):
        raise AssertionError("a finished item was refined again")

    monkeypatch.setattr("siso.runs.refine.edit_subject", no_refine)
    assert main([*args, *finders, *scoring]) == 0
    assert (
        main(
            [
                *args,
                *finders,
                *scoring[:1],
                "dino,clip_i,clip_t,dinov2",
                "--metric-model",
                f"dinov2={model_dirs['dino']}",
            ]
        )
        == 0
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert all("dinov2_region" in r["gain"] and "lpips" not in r for r in _records(out))


def test_an_interrupted_item_leaves_nothing_and_one_where_nothing_is_found_is_skipped(
    dreambench, model_dirs, eval_models, finders, tmp_path, capsys, monkeypatch
):
    items = load_dreambench(dreambench)[:1]
    source = _to_refine(items, tmp_path / "other", per_item=2)
    out = tmp_path / "run"
    args = _refine_args(dreambench, source, model_dirs, eval_models, out, "--limit", "1", "--num-images", "2")
    save_iteration = RunFolder.save_iteration

    def interrupted(folder, iteration, image):
        if folder.path.name == "1" and iteration == 1:  # the item's second image; its first is refined already
            raise KeyboardInterrupt
        save_iteration(folder, iteration, image)

    monkeypatch.setattr(RunFolder, "save_iteration", interrupted)
    assert main([*args, "--region", "all"]) == 130
    left = [p.relative_to(out) for p in (out / "subjects").rglob("*")]
    assert left == [Path("subjects/dog")]  # an empty subject folder: neither the item nor its partial folder
    assert not (out / "generated").exists()

    assert main([*args, *finders, "--box-threshold", "1.0"]) == 2  # no detection scores 1.0
    err = capsys.readouterr().err
    assert "siso: skipped dog/00: no 'dog' was found in the image to refine" in err
    assert "1 of 1 items were not refined (first: dog/00)" in err
    assert (out / "subjects" / "dog" / "00" / "skipped.txt").is_file()
    assert not (out / "generated").exists() and _records(out) == []


def test_eval_run_refines_on_two_processes_like_one(dreambench, model_dirs, eval_models, tmp_path):
    items = load_dreambench(dreambench)[:2]
    source = _to_refine(items, tmp_path / "other")
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("--region", "all", "--limit", "2")
    assert main(_refine_args(dreambench, source, model_dirs, eval_models, one, *args)) == 0
    proc = _on_two_processes(_refine_args(dreambench, source, model_dirs, eval_models, two, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| metric |") == 1  # the main process prints the summary

    def without_timings(record):
        return {
            k: [without_timings(r) for r in v] if k == "per_image" else v for k, v in record.items() if k != "seconds"
        }

    assert [without_timings(r) for r in _records(two)] == [without_timings(r) for r in _records(one)]
    assert [r["item"] for r in _records(one)] == [item.id for item in items]
    for item in items:
        a, b = (np.asarray(Image.open(d / "generated" / item.id / "0.png")) for d in (one, two))
        assert np.array_equal(a, b), item.id


def test_the_documented_zero_shot_script_writes_what_from_takes(dreambench, model_dirs, tmp_path, monkeypatch):
    blocks = fenced_blocks(ROOT / "docs" / "evaluation.md")
    [code] = [code for lang, code, _, _ in blocks if lang == "python" and "zero-shot/ip-adapter" in code]
    adapter = tiny.make_ip_adapter(tmp_path / "ip", UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet"))
    for name, tiny_one in (
        ("sdxl-turbo", model_dirs["sdxl"]),
        ("h94/IP-Adapter", adapter),
        ("data/dreambooth", dreambench),
    ):
        code = code.replace(f'"{name}"', repr(str(tiny_one)))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs/evaluation.md>", "exec"), {"__name__": "__docs__"})
    images = images_to_refine(load_dreambench(dreambench), tmp_path / "zero-shot" / "ip-adapter", 6)
    assert [len(paths) for paths in images.values()] == [6] * 4
