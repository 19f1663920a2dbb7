"""The dreambench-multi suite: items, per-subject scoring on constructed images with known answers, location accuracy
with a stand-in detector, and `siso eval run` learning each item's subjects in their boxes (resumable, sharded)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from console import accelerate_launch
from PIL import Image

from siso.cli import main
from siso.compose import Box, iou
from siso.eval.metrics import read_rgb
from siso.eval.multi import MULTI_PROMPTS, PAIR_LAYOUT, PAIRS, BoxedSubject, MultiItem
from siso.eval.score import ITEMS_FILE, read_records, score
from siso.eval.suites import SUITES, SuiteError, generated_images, load_dreambench_multi

# DreamBench's classes of the subjects the pairs use (google/dreambooth dataset/prompts_and_classes.txt).
CLASSES = {
    "backpack": "backpack",
    "backpack_dog": "backpack",
    "bear_plushie": "stuffed animal",
    "candle": "candle",
    "cat": "cat",
    "cat2": "cat",
    "colorful_sneaker": "sneaker",
    "dog": "dog",
    "dog2": "dog",
    "dog6": "dog",
    "dog8": "dog",
    "fancy_boot": "boot",
    "robot_toy": "toy",
    "shiny_sneaker": "sneaker",
    "teapot": "teapot",
    "vase": "vase",
    "wolf_plushie": "stuffed animal",
}
PROMPTS = """
Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the snow'.format(unique_token, class_token)
]
"""
SIDE = 200  # constructed "generated" images: each box of the layout is then 92 x 140 px
PHOTO = (92, 140)


def _photo(seed: int, size=PHOTO) -> Image.Image:
    """A smooth image of its own colours (a random 3x4 image, upsampled), as unlike another seed's as can be."""
    coarse = np.random.default_rng(seed).integers(0, 255, (4, 3, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)


def _make_dreambench(root: Path) -> Path:
    dataset = root / "dataset"
    for seed, subject in enumerate(CLASSES):
        (dataset / subject).mkdir(parents=True)
        _photo(seed).save(dataset / subject / "00.png")
    dog = _photo(list(CLASSES).index("dog"))
    dog.crop((0, 0, 88, 132)).resize(PHOTO).save(dataset / "dog" / "01.png")  # "dog" seen a little closer
    table = "\n".join(f"{s},{c}" for s, c in CLASSES.items())
    (dataset / "prompts_and_classes.txt").write_text(f"Classes\n\nsubject_name,class\n{table}\n{PROMPTS}")
    return root


@pytest.fixture(scope="module")
def dreambench(tmp_path_factory) -> Path:
    return _make_dreambench(tmp_path_factory.mktemp("dreambooth"))


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-models")
    clip = str(tiny.make_clip(root / "clip"))
    return {"dino": str(tiny.make_dino_v1(root / "dino-v1")), "clip_i": clip, "clip_t": clip}


def test_dreambench_multi_items(dreambench, tmp_path):
    items = load_dreambench_multi(dreambench)
    assert SUITES["dreambench-multi"] is load_dreambench_multi
    assert len(items) == len(PAIRS) * len(MULTI_PROMPTS) == 60
    assert [i.id for i in items[:2]] == ["dog+dog2/00", "dog+dog2/01"] and items[-1].id == "robot_toy+candle/04"
    item = next(i for i in items if i.id == "dog8+bear_plushie/02")
    assert item.prompt == "a dog and a stuffed animal in the snow"
    assert item.train_prompt == "a photo of a dog and a stuffed animal"
    assert [(s.subject, s.class_name, s.box) for s in item.subjects] == [
        ("dog8", "dog", PAIR_LAYOUT[0]),
        ("bear_plushie", "stuffed animal", PAIR_LAYOUT[1]),
    ]
    assert [p.name for p in items[0].subjects[0].references] == ["00.png", "01.png"]
    assert items[0].subjects[0].photo.name == "00.png" and items[0].subject == "dog+dog2"
    assert load_dreambench_multi(dreambench / "dataset", "sks")[0].prompt == "a sks dog and a sks dog in the jungle"
    # The pairs mix living and object subjects, of the same, similar and different classes.
    kinds = {kind.split(",")[0] for _, _, kind in PAIRS}
    assert kinds == {"living", "living + object", "objects"}
    assert any("same class" in k for *_, k in PAIRS) and any("dissimilar" in k for *_, k in PAIRS)
    # The boxes of a pair do not overlap.
    assert iou(PAIR_LAYOUT[0].corners, PAIR_LAYOUT[1].corners) == 0


def test_dreambench_multi_wrong_layout(tmp_path):
    root = _make_dreambench(tmp_path / "db")
    shutil.rmtree(root / "dataset" / "candle")
    with pytest.raises(SuiteError, match="'candle' has no images"):
        load_dreambench_multi(root)
    spec = root / "dataset" / "prompts_and_classes.txt"
    spec.write_text(spec.read_text().replace("vase,vase\n", ""))
    with pytest.raises(SuiteError, match="class table lacks the dreambench-multi subject.*vase"):
        load_dreambench_multi(root)
    with pytest.raises(SuiteError, match="not a DreamBench folder"):
        load_dreambench_multi(tmp_path / "nothing")


def test_multi_item_checks(tmp_path):
    photo = tmp_path / "a.png"
    subject = BoxedSubject("dog", "dog", (photo,), Box(0, 0, 0.5, 1))
    with pytest.raises(ValueError, match="names a subject twice: dog, dog"):
        MultiItem("x/00", "p", (subject, subject))
    with pytest.raises(ValueError, match="has 0 subjects"):
        MultiItem("x/00", "p", ())
    with pytest.raises(ValueError, match="must be in fractions"):
        BoxedSubject("dog", "dog", (photo,), Box(0, 0, 16, 32))
    with pytest.raises(ValueError, match="has no photo"):
        BoxedSubject("dog", "dog", (), Box(0, 0, 0.5, 1))


def _compose(item: MultiItem, order: list[int]) -> Image.Image:
    """A "generated" image: a noise background with subject ``order[k]``'s first photo pasted into box k."""
    image = Image.fromarray(np.random.default_rng(7).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8))
    for box, k in zip(PAIR_LAYOUT, order, strict=True):
        x0, y0, x1, y1 = box.pixels(SIDE, SIDE)
        photo = read_rgb(item.subjects[k].photo)
        assert photo.size == (x1 - x0, y1 - y0)
        image.paste(photo, (x0, y0))
    return image


def _generated(items, root: Path, orders: list[list[int]]) -> Path:
    for item in items:
        (root / item.id).mkdir(parents=True)
        for n, order in enumerate(orders):
            _compose(item, order).save(root / item.id / f"{n}.png")
    return root


def _pick(dreambench, *ids):
    items = {i.id: i for i in load_dreambench_multi(dreambench)}
    return [items[i] for i in ids]


def test_scores_with_known_answers(dreambench, eval_models, tmp_path):
    teapot_vase, cat_dog = _pick(dreambench, "teapot+vase/00", "cat+dog/01")
    # One item per case, each with its own id: its images have the subjects' photos pasted into the boxes.
    cases = {"right": [[0, 1]], "swapped": [[1, 0]], "a twice": [[0, 0]], "half": [[0, 1], [1, 0]]}
    items = [dataclasses.replace(teapot_vase, id=f"teapot+vase/{case}") for case in cases] + [cat_dog]
    generated = tmp_path / "generated"
    for item, orders in zip(items, [*cases.values(), [[0, 1]]], strict=True):
        _generated([item], generated, orders)
    rows = score(items, generated, tmp_path / "scores", ["dino", "clip_i", "clip_t"], eval_models, progress=False)
    assert [r["metric"] for r in rows] == [
        *("dino", "dino_min", "clip_i", "clip_i_min", "clip_t", "success", "leakage"),
    ]
    records = {r["item"].split("/")[1]: r for r in read_records(tmp_path / "scores" / ITEMS_FILE)}
    # success: the share of an item's images where every box looks most like its own subject.
    assert [records[case]["metrics"]["success"] for case in cases] == [1.0, 0.0, 0.0, 0.5]
    # leakage: none where each box is its own subject's photo; where a box shows the other subject, that box looks
    # like it more than its own subject's photo does (swapped: both boxes; A twice: B's box only, so half as much).
    leakage = {case: records[case]["metrics"]["leakage"] for case in cases}
    assert leakage["right"] == pytest.approx(0.0, abs=1e-5) and leakage["swapped"] > 0.01
    assert leakage["a twice"] == pytest.approx(leakage["swapped"] / 2, abs=1e-5)
    assert leakage["half"] == pytest.approx(leakage["swapped"] / 2, abs=1e-5)
    right = records["right"]
    assert right["subject"] == "teapot+vase" and right["success_metric"] == "dino"
    assert right["boxes"] == [[[4, 40, 96, 180], [104, 40, 196, 180]]]
    # Each box is exactly its subject's only photo: identity 1 for each subject, its mean and its minimum.
    for name in ("dino", "clip_i"):
        for key in (f"{name}/teapot", f"{name}/vase", name, f"{name}_min"):
            assert right["metrics"][key] == pytest.approx(1.0, abs=1e-5), key
    # "dog" has a second real photo: its identity is the mean over both, below 1.
    assert records["01"]["metrics"]["success"] == 1.0
    cat_dog = records["01"]["metrics"]
    assert cat_dog["dino/cat"] == pytest.approx(1.0, abs=1e-5) and cat_dog["dino/dog"] < 0.9999
    assert cat_dog["dino_min"] == cat_dog["dino/dog"]
    assert cat_dog["dino"] == pytest.approx((cat_dog["dino/cat"] + cat_dog["dino/dog"]) / 2)
    # Subject A in both boxes: A is perfect, B is missing, so the minimum falls below the mean.
    twice = records["a twice"]["metrics"]
    assert twice["dino/teapot"] == pytest.approx(1.0, abs=1e-5) and twice["dino_min"] == twice["dino/vase"] < 0.999
    # CLIP-T scores the whole image with the prompt, whatever is in the boxes.
    assert right["metrics"]["clip_t"] != records["swapped"]["metrics"]["clip_t"]


def test_location_accuracy_with_a_stand_in_detector(dreambench, eval_models, tmp_path):
    items = _pick(dreambench, "dog+dog2/00", "teapot+vase/00")
    generated = _generated(items, tmp_path / "generated", [[0, 1], [1, 0]])
    detector = str(tiny.make_grounding_dino(tmp_path / "gdino"))
    models = {"dino": eval_models["dino"]}
    score(items, generated, tmp_path / "plain", ["dino"], models, progress=False)
    rows = score(items, generated, tmp_path / "located", ["dino"], models, progress=False, crop=detector)
    assert [r["metric"] for r in rows] == ["dino", "dino_min", "success", "leakage", "iou", "iou_min"]
    plain, located = (read_records(tmp_path / d / ITEMS_FILE) for d in ("plain", "located"))
    for a, b in zip(plain, located, strict=True):
        assert "detected_boxes" not in a
        # Identity stays on the requested boxes; the detector only adds where each subject was found.
        assert {k: v for k, v in b["metrics"].items() if not k.startswith("iou")} == pytest.approx(a["metrics"])
        assert len(b["detected_boxes"]) == 2 and all(len(d) == 2 for d in b["detected_boxes"])
        names = b["subject"].split("+")
        for k, name in enumerate(names):
            ious = [iou(d[k], r[k]) if d[k] else 0.0 for d, r in zip(b["detected_boxes"], b["boxes"], strict=True)]
            assert b["metrics"][f"iou/{name}"] == pytest.approx(np.mean(ious))
        assert b["metrics"]["iou_min"] == min(b["metrics"][f"iou/{n}"] for n in names)
    # The random tiny detector scores its boxes above the 0.3 threshold: every subject is matched to a box.
    assert all(box is not None for r in located for d in r["detected_boxes"] for box in d)


def test_eval_score_cli_on_dreambench_multi(dreambench, eval_models, tmp_path, capsys):
    items = load_dreambench_multi(dreambench)[:2]
    generated = _generated(items, tmp_path / "generated", [[0, 1]])
    args = ["eval", "score", "--suite", "dreambench-multi", "--data", str(dreambench), "--generated", str(generated)]
    args += ["--out", str(tmp_path / "scores"), "--limit", "2", "--metric-model", f"dino={eval_models['dino']}"]
    assert main([*args, "--metrics", "dino", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| dino_min |" in out and "| success | 1.0000 |" in out
    assert main([*args, "--metrics", "dino,mse", "--quiet"]) == 2
    assert (
        "mse do not apply to multi-subject items; they take dino, dinov2, clip_i, ir, clip_t" in capsys.readouterr().err
    )


def test_fetch_dreambench_multi_is_the_dreambench_clone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("siso.eval.fetch.DREAMBENCH_REPO", str(tmp_path / "no-repo"))  # git fails, offline
    assert main(["eval", "fetch", "--suite", "dreambench-multi", "--out", str(tmp_path / "new")]) == 2
    assert f"git clone {tmp_path / 'no-repo'} failed" in capsys.readouterr().err


# --- siso eval run --------------------------------------------------------------------------------------------


def _run_args(dreambench, model_dirs, eval_models, out, *extra):
    return [
        "eval",
        "run",
        "--suite",
        "dreambench-multi",
        "--data",
        str(dreambench),
        "--out",
        str(out),
        "--model",
        str(model_dirs["sd"]),
        "--dino-model",
        str(model_dirs["dino"]),
        "--ir-model",
        str(model_dirs["clip"]),
        "--lr",
        "1e-2",
        "--max-iters",
        "2",
        "--limit",
        "2",
        "--metrics",
        "dino",
        "--metric-model",
        f"dino={eval_models['dino']}",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def one_process_run(dreambench, model_dirs, eval_models, tmp_path_factory) -> Path:
    """``siso eval run`` on the first two items (dog+dog2/00 and /01), per-prompt, on one thread (as each process of
    the launcher runs), so that the sharded run must match it exactly."""
    out = tmp_path_factory.mktemp("multi-run") / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_run_args(dreambench, model_dirs, eval_models, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_eval_run_learns_each_item_in_its_boxes(one_process_run, dreambench):
    out = one_process_run
    items = load_dreambench_multi(dreambench)[:2]
    for item in items:
        assert [p.name for p in generated_images(out / "generated", item)] == ["0.png"]
        unit = out / "subjects" / item.id
        info = json.loads((unit / "lora" / "siso_subject.json").read_text())
        assert info["train_prompt"] == item.prompt  # per-prompt: dreambench-multi's default
        # Learned as `siso generate` learns subjects with boxes: one identity term per subject, on its box.
        assert [(s["class"], s["box"], s["term"]) for s in info["subjects"]] == [
            ("dog", "0.02,0.2,0.48,0.9", "dog1"),
            ("dog", "0.52,0.2,0.98,0.9", "dog2"),
        ]
        assert [s["box_pixels"] for s in info["subjects"]] == [[0, 6, 16, 29], [16, 6, 32, 29]]  # of the 32 px image
        iterations = json.loads((unit / "metrics.json").read_text())["iterations"]
        assert {"identity/dog1", "identity/dog2", "leakage", "presence"} <= set(iterations[0])
    records = read_records(out / "scores" / ITEMS_FILE)
    assert [r["item"] for r in records] == [i.id for i in items]
    assert {"dino/dog", "dino/dog2", "dino", "dino_min", "success"} <= set(records[0]["metrics"])


def test_eval_run_resumes_without_learning_again(
    one_process_run, dreambench, model_dirs, eval_models, tmp_path, monkeypatch
):
    out = shutil.copytree(one_process_run, tmp_path / "run")
    lost = out / "generated" / "dog+dog2" / "01" / "0.png"
    before = np.asarray(Image.open(lost))
    lost.unlink()

    def no_learning(*args, **kwargs):
        raise AssertionError("a saved subject was learned again")

    monkeypatch.setattr("siso.runs.run.optimize_generation", no_learning)
    assert main(_run_args(dreambench, model_dirs, eval_models, out)) == 0
    assert np.abs(np.asarray(Image.open(lost)).astype(int) - before).max() <= 1  # from the saved LoRA


def test_eval_run_two_stage_learns_one_lora_per_pair(dreambench, model_dirs, eval_models, tmp_path):
    out = tmp_path / "run"
    args = _run_args(dreambench, model_dirs, eval_models, out, "--protocol", "two-stage", "--max-iters", "1")
    assert main(args) == 0
    assert [p.name for p in (out / "subjects").iterdir()] == ["dog+dog2"]
    info = json.loads((out / "subjects" / "dog+dog2" / "lora" / "siso_subject.json").read_text())
    assert info["train_prompt"] == "a photo of a dog and a dog" and len(info["subjects"]) == 2
    assert len(read_records(out / "scores" / ITEMS_FILE)) == 2


def test_eval_run_on_two_processes_matches_one(one_process_run, dreambench, model_dirs, eval_models, tmp_path):
    two = tmp_path / "two"
    bin_dir = Path(sys.executable).parent
    launcher = [*accelerate_launch(2), str(bin_dir / "siso")]
    proc = subprocess.run(
        [*launcher, *_run_args(dreambench, model_dirs, eval_models, two)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| metric |") == 1
    for item in load_dreambench_multi(dreambench)[:2]:
        a, b = (np.asarray(Image.open(d / "generated" / item.id / "0.png")) for d in (one_process_run, two))
        assert np.array_equal(a, b), item.id
    one_records, two_records = (read_records(d / "scores" / ITEMS_FILE) for d in (one_process_run, two))
    assert [r["item"] for r in two_records] == ["dog+dog2/00", "dog+dog2/01"]
    for a, b in zip(one_records, two_records, strict=True):
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
