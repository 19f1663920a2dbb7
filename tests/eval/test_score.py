"""`siso.eval.score`: per-item records and the summary, resumable, sharded over processes, with crops."""

import json

import numpy as np
import pytest
import tiny

from siso.cli import main
from siso.eval.score import ITEMS_FILE, read_records, score
from siso.eval.suites import SuiteError, generated_images, load_dreambench

from .helpers import _generate, _on_two_processes


def test_score_writes_records_and_summary_and_resumes(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    out = tmp_path / "scores"
    names = ["dino", "clip_t", "mse"]
    models = {k: eval_models[k] for k in ("dino", "clip_t")}
    rows = score(items, generated, out, names, models, progress=False)
    records = read_records(out / ITEMS_FILE)
    assert [r["item"] for r in records] == [i.id for i in items]
    assert records[0]["images"] == ["dog/00/0.png", "dog/00/1.png"]
    assert [r["metric"] for r in rows] == names and all(r["n"] == 4 for r in rows)
    dino = [r["metrics"]["dino"] for r in records]
    assert rows[0]["mean"] == pytest.approx(np.mean(dino))
    assert rows[0]["sem"] == pytest.approx(np.std(dino, ddof=1) / 2)
    assert (out / "summary.md").read_text().startswith("| metric | mean | +- s.e. | items |")
    assert (out / "summary.csv").read_text().splitlines()[0] == "metric,mean,sem,n"
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["clip_t.png", "dino.png", "mse.png"]

    # Resume: finished items are skipped (their images may even be gone) ...
    for path in generated_images(generated, items[0]):
        path.unlink()
    # ... and a line cut short by a crash is dropped and its item rescored.
    data = (out / ITEMS_FILE).read_bytes()
    (out / ITEMS_FILE).write_bytes(data[: len(data) - 20])
    rows_again = score(items, generated, out, names, models, progress=False)
    again = read_records(out / ITEMS_FILE)
    assert [r["item"] for r in again] == [i.id for i in items]
    assert again[-1] == records[-1]
    assert rows_again == rows


def test_set_metric_needs_a_reference(dreambench, tmp_path):
    items = load_dreambench(dreambench)
    with pytest.raises(ValueError, match="cmmd compare against a reference set"):
        score(items, _generate(items, tmp_path / "g"), tmp_path / "o", ["cmmd"], progress=False)
    with pytest.raises(SuiteError, match="reference folder .* has no images"):
        score(items, tmp_path / "g", tmp_path / "o", ["cmmd"], progress=False, reference=tmp_path / "nope")
    with pytest.raises(ValueError, match="not requested: dino"):
        score(items, tmp_path / "g", tmp_path / "o", ["mse"], {"dino": "x"}, progress=False)


def test_missing_items_are_named_and_the_rest_kept(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items[:3], tmp_path / "generated")
    out = tmp_path / "scores"
    with pytest.raises(SuiteError, match="1 of 4 items have no images.*first: red_teapot/01"):
        score(items, generated, out, ["mse"], progress=False)
    assert len(read_records(out / ITEMS_FILE)) == 3
    assert json.loads((out / "summary.json").read_text())["missing"] == ["red_teapot/01"]


def test_two_process_sharded_run_merges_to_the_one_process_table(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    args = [
        "eval",
        "score",
        "--suite",
        "dreambench",
        "--data",
        str(dreambench),
        "--generated",
        str(generated),
        "--metrics",
        "dino,mse",
        "--metric-model",
        f"dino={eval_models['dino']}",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    proc = _on_two_processes([*args, "--out", str(tmp_path / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (read_records(tmp_path / d / ITEMS_FILE) for d in ("one", "two"))
    assert [r["item"] for r in two] == [r["item"] for r in one]  # merged in suite order
    for a, b in zip(one, two, strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
    assert not list((tmp_path / "two").glob("items.*.jsonl"))  # shards merged and removed
    assert proc.stdout.count("| metric |") == 1  # only the main process prints the table
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text())["metrics"] for d in ("one", "two"))
    for a, b in zip(s1, s2, strict=True):
        assert a["metric"] == b["metric"] and a["n"] == b["n"]
        assert a["mean"] == pytest.approx(b["mean"], abs=1e-6) and a["sem"] == pytest.approx(b["sem"], abs=1e-6)


def test_crop_before_identity_metrics(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)[:2]
    generated = _generate(items, tmp_path / "generated")
    detector = str(tiny.make_grounding_dino(tmp_path / "gdino"))
    models = {"dino": eval_models["dino"]}
    plain = read_records_after(score, items, generated, tmp_path / "plain", ["dino", "mse"], models)
    cropped = read_records_after(score, items, generated, tmp_path / "crop", ["dino", "mse"], models, crop=detector)
    assert all(len(r["crop_boxes"]) == len(r["images"]) for r in cropped)
    assert "crop_boxes" not in plain[0]
    # mse is measured on whole images either way; identity on crops where a box was found
    assert [r["metrics"]["mse"] for r in cropped] == pytest.approx([r["metrics"]["mse"] for r in plain])
    # the random tiny detector scores its boxes near 1, above the 0.3 threshold, so every image is cropped
    assert all(b is not None for r in cropped for b in r["crop_boxes"])
    assert [r["metrics"]["dino"] for r in cropped] != pytest.approx([r["metrics"]["dino"] for r in plain])


def read_records_after(score_fn, *args, **kwargs):
    score_fn(*args, progress=False, **kwargs)
    return read_records(args[2] / ITEMS_FILE)


def test_a_limited_rerun_keeps_earlier_records(dreambench, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    out = tmp_path / "scores"
    score(items, generated, out, ["mse"], progress=False)
    rows = score(items[:1], generated, out, ["mse"], progress=False)
    assert rows[0]["n"] == 1  # the summary covers the items asked for ...
    assert [r["item"] for r in read_records(out / ITEMS_FILE)] == [i.id for i in items]  # ... the file keeps all
