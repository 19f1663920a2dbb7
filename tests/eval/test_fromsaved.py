"""``siso eval run --suite dreambench-multi --from-saved``: each subject learned alone once and reused, every item
composed from the saved subjects with and without a polish, the three arms beside the joint learning in one summary;
resumed without learning again, and sharded over 2 processes as over 1."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

import siso.runs.run
from siso.cli import main
from siso.eval.multi import PAIR_LAYOUT
from siso.eval.score import ITEMS_FILE, read_records
from siso.eval.suites import load_dreambench_multi

from ..cli.helpers import _error
from .helpers import _on_two_processes
from .test_multi import _make_dreambench, _run_args

ARMS = {"joint": "", "composed": "composed", "polished": "polished"}  # arm -> its folder under OUT
ITEMS = ("dog+dog2/00", "dog+dog2/01")  # --limit 2: both items use both subjects


@pytest.fixture(scope="module")
def dreambench(tmp_path_factory) -> Path:
    return _make_dreambench(tmp_path_factory.mktemp("dreambooth"))


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory) -> dict[str, str]:
    return {"dino": str(tiny.make_dino_v1(tmp_path_factory.mktemp("eval-models") / "dino-v1"))}


def _args(dreambench, model_dirs, eval_models, out, *extra):
    return _run_args(dreambench, model_dirs, eval_models, out, "--from-saved", "--polish", "2", *extra)


@pytest.fixture(scope="module")
def one_process_run(dreambench, model_dirs, eval_models, tmp_path_factory) -> tuple[Path, list[str], str]:
    """The first two items with ``--from-saved --polish 2``, on one thread (as each process of the launcher runs, so
    that the sharded run must match it exactly); returns the folder, the train prompt of every learning run, and what
    the command printed."""
    out = tmp_path_factory.mktemp("from-saved") / "one"
    learned, printed = [], io.StringIO()
    optimize = siso.runs.run.optimize_generation

    def counted(backbone, loss_fn, config, *args, **kwargs):
        learned.append(config.train_prompt)
        return optimize(backbone, loss_fn, config, *args, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
            patch.setattr("siso.runs.run.optimize_generation", counted)
            assert main(_args(dreambench, model_dirs, eval_models, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out, learned, printed.getvalue()


def test_each_subject_is_learned_alone_once_and_every_item_composed(one_process_run):
    out, learned, printed = one_process_run
    # The joint arm learns each item (per-prompt); each subject is learned alone once, though both items use both.
    assert learned == ["a dog and a dog in the jungle", "a dog and a dog on the beach", *["a photo of a dog"] * 2]
    assert sorted(p.name for p in (out / "saved").iterdir()) == ["dog", "dog2"]
    info = json.loads((out / "saved" / "dog2" / "lora" / "siso_subject.json").read_text())
    assert info["train_prompt"] == "a photo of a dog" and "subjects" not in info  # alone: no box, one subject
    for arm, polish in (("composed", 0), ("polished", 2)):
        for item in ITEMS:
            run = out / arm / "subjects" / item
            config = json.loads((run / "config.json").read_text())
            # Each subject in the box the joint arm learns it in, from its saved folder.
            assert [(s["name"], s["class"], s["box"], s["term"]) for s in config["subjects"]] == [
                ("dog", "dog", str(PAIR_LAYOUT[0]), "dog1"),
                ("dog2", "dog", str(PAIR_LAYOUT[1]), "dog2"),
            ]
            assert [Path(s["folder"]).parent.name for s in config["subjects"]] == ["dog", "dog2"]
            assert config["polish"] == polish and config["siso"]["train_prompt"] == config["job"]["prompts"][0]
            metrics = json.loads((run / "metrics.json").read_text())
            assert ("iterations" in metrics) == bool(polish) and len(metrics.get("iterations", [])) <= polish
    for arm, folder in ARMS.items():
        records = read_records(out / folder / "scores" / ITEMS_FILE)
        assert [r["item"] for r in records] == list(ITEMS), arm
        assert {"dino/dog", "dino/dog2", "dino", "dino_min", "success", "leakage"} <= set(records[0]["metrics"])
        assert all((out / folder / "generated" / item / "0.png").is_file() for item in ITEMS)
    # The summary puts the arms side by side, as printed.
    summary = (out / "summary.md").read_text()
    assert printed == summary
    lines = summary.splitlines()
    assert lines[0] == "| metric | joint | composed | polished |"
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines[2:] if line.startswith("| ")]
    parts = ["seconds_learning", "seconds_polish", "seconds_drawing"]
    assert rows == ["dino", "dino_min", "success", "leakage", "seconds", *parts]
    assert "divided by the number of these items it appears in (dog 2, dog2 2)" in summary


def test_seconds_count_each_subject_once(one_process_run, dreambench):
    out = one_process_run[0]
    seconds = json.loads((out / "summary.json").read_text())["seconds"]

    def loop(path):
        return sum(i["seconds"] for i in json.loads(path.read_text())["iterations"])

    alone = loop(out / "saved" / "dog" / "metrics.json") + loop(out / "saved" / "dog2" / "metrics.json")
    for item in ITEMS:
        joint = seconds["joint"][item]
        assert joint["seconds_learning"] == pytest.approx(loop(out / "subjects" / item / "metrics.json"))
        assert joint["seconds_polish"] == 0 and joint["seconds_drawing"] > 0
        # Both subjects are used by both items: each item carries half of each subject's learning.
        composed, polished = seconds["composed"][item], seconds["polished"][item]
        assert composed["seconds_learning"] == polished["seconds_learning"] == pytest.approx(alone / 2)
        assert composed["seconds_polish"] == 0 and polished["seconds_polish"] == pytest.approx(
            loop(out / "polished" / "subjects" / item / "metrics.json")
        )
        for parts in (joint, composed, polished):
            assert parts["seconds"] == pytest.approx(
                sum(parts[k] for k in ("seconds_learning", "seconds_polish", "seconds_drawing"))
            )


def test_a_rerun_learns_nothing_again(one_process_run, dreambench, model_dirs, eval_models, tmp_path, monkeypatch):
    out = shutil.copytree(one_process_run[0], tmp_path / "run")
    kept = out / "composed" / "generated" / "dog+dog2" / "01" / "0.png"  # its run folder still holds it
    redrawn = out / "polished" / "generated" / "dog+dog2" / "00" / "0.png"  # composed and polished again
    before = {path: path.read_bytes() for path in (kept, redrawn)}
    kept_run = out / "composed" / "subjects" / "dog+dog2" / "01" / "metrics.json"
    stamp = kept_run.stat().st_mtime_ns
    kept.unlink()
    redrawn.unlink()
    shutil.rmtree(out / "polished" / "subjects" / "dog+dog2" / "00")

    def no_learning(*args, **kwargs):
        raise AssertionError("a subject was learned again")

    monkeypatch.setattr("siso.runs.run.optimize_generation", no_learning)
    assert main(_args(dreambench, model_dirs, eval_models, out)) == 0
    assert kept.read_bytes() == before[kept] and kept_run.stat().st_mtime_ns == stamp  # copied, not composed again
    a, b = (np.asarray(Image.open(f)).astype(int) for f in (redrawn, io.BytesIO(before[redrawn])))
    assert np.abs(a - b).max() <= 1  # from the saved subjects, polished again


def test_refusals(dreambench, tmp_path, capsys):
    base = ["eval", "run", "--data", str(dreambench), "--out", str(tmp_path / "o"), "--model", "/nonexistent/model"]
    assert "--polish N polishes --from-saved's" in _error(
        capsys, [*base, "--suite", "dreambench-multi", "--polish", "3"]
    )
    line = _error(capsys, [*base, "--suite", "dreambench", "--from-saved"])
    assert "--from-saved composes the subject pairs of dreambench-multi; dreambench has none" in line
    line = _error(capsys, [*base, "--suite", "dreambench-multi", "--from-saved", "--polish", "0", "--limit", "1"])
    assert "--polish takes a whole number of iterations >= 1, got 0" in line
    assert not (tmp_path / "o").exists()


def test_two_processes_match_one(one_process_run, dreambench, model_dirs, eval_models, tmp_path):
    one, two = one_process_run[0], tmp_path / "two"
    proc = _on_two_processes(_args(dreambench, model_dirs, eval_models, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| metric | joint | composed | polished |") == 1
    assert sorted(p.name for p in (two / "saved").iterdir()) == ["dog", "dog2"]
    for arm, folder in ARMS.items():
        for item in load_dreambench_multi(dreambench)[:2]:
            a, b = (np.asarray(Image.open(d / folder / "generated" / item.id / "0.png")) for d in (one, two))
            assert np.array_equal(a, b), (arm, item.id)
        one_records, two_records = (read_records(d / folder / "scores" / ITEMS_FILE) for d in (one, two))
        assert [r["item"] for r in two_records] == list(ITEMS)
        for a, b in zip(one_records, two_records, strict=True):
            assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
