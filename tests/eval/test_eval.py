"""Evaluation: DreamBench layout, per-item metrics on tiny real networks, resumable scoring, the CLI."""

import dataclasses
import importlib.util
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

from siso.backbones import load_backbone
from siso.cli import eval as eval_cli
from siso.cli import main
from siso.config import EditConfig, LoraSettings, OptimSettings, SimilaritySettings
from siso.eval.edit import edit_suite
from siso.eval.inception import FIDInceptionV3
from siso.eval.lpips import LPIPS
from siso.eval.metrics import METRICS, BackgroundLPIPS, build_metrics, read_rgb
from siso.eval.score import ITEMS_FILE, read_records, score
from siso.eval.suites import (
    SUITES,
    SuiteError,
    export_imagenhub_editing,
    export_imagenhub_generation,
    generated_images,
    load_dreambench,
    load_imagenhub_generation,
)
from siso.hub import ModelLoadError
from siso.lora import WEIGHTS_FILE, add_lora, save_lora
from siso.losses import GuieNet
from siso.vision.masks import box_mask

# The real file's format (google/dreambooth dataset/prompts_and_classes.txt), with fewer subjects and prompts.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
dog,dog
red_teapot,teapot

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the snow'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token)
]
"""


def _photo(seed: int, size=(80, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def dreambench(tmp_path) -> Path:
    dataset = tmp_path / "dreambooth" / "dataset"
    for seed, subject in enumerate(["dog", "red_teapot"]):
        (dataset / subject).mkdir(parents=True)
        _photo(seed).save(dataset / subject / "00.jpg")
    _photo(9).save(dataset / "dog" / "01.jpg")
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    return tmp_path / "dreambooth"


@pytest.fixture(scope="session")
def eval_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval-models")
    clip = str(tiny.make_clip(root / "clip"))
    return {
        "dino": str(tiny.make_dino_v1(root / "dino-v1")),
        "dinov2": str(tiny.make_dino(root / "dinov2")),
        "clip_i": clip,
        "ir": clip,
        "clip_t": clip,
    }


def _on_two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``siso ARGS`` under ``accelerate launch`` with 2 processes; on a CPU-only machine they use gloo."""
    bin_dir = Path(sys.executable).parent
    launcher = accelerate_launch(2)
    return subprocess.run(
        [*launcher, str(bin_dir / "siso"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )


def _generate(items, root: Path, per_item: int = 2) -> Path:
    """Fake "generated" images: the subject's first photo itself (item 0) and noise."""
    for n, item in enumerate(items):
        folder = root / item.id
        folder.mkdir(parents=True)
        Image.open(item.subject_image).save(folder / "0.png")
        for k in range(1, per_item):
            _photo(100 + n * 10 + k).save(folder / f"{k}.png")
    return root


def test_dreambench_items(dreambench):
    items = load_dreambench(dreambench)
    assert [i.id for i in items] == ["dog/00", "dog/01", "red_teapot/00", "red_teapot/01"]
    assert [i.prompt for i in items] == [
        "a dog in the snow",
        "a dog wearing a red hat",
        "a teapot in the jungle",
        "a red teapot",
    ]
    assert items[0].subject_image.name == "00.jpg" and len(items[0].references) == 2
    assert load_dreambench(dreambench / "dataset", unique_token="sks")[0].prompt == "a sks dog in the snow"


def test_dreambench_wrong_layout(tmp_path, dreambench):
    with pytest.raises(SuiteError, match="not a DreamBench folder.*prompts_and_classes.txt"):
        load_dreambench(tmp_path / "nothing")
    for photo in (dreambench / "dataset" / "red_teapot").iterdir():
        photo.unlink()
    with pytest.raises(SuiteError, match="'red_teapot' has no images"):
        load_dreambench(dreambench)
    (dreambench / "dataset" / "prompts_and_classes.txt").write_text("Classes\n\nPrompts\n")
    with pytest.raises(SuiteError, match="cannot parse"):
        load_dreambench(dreambench)


def test_identity_and_diversity_metrics_on_known_cases(dreambench, eval_models):
    item = load_dreambench(dreambench)[2]  # red_teapot: a single reference photo
    metrics = build_metrics(
        ["dino", "dinov2", "clip_i", "mse"], {k: eval_models[k] for k in ("dino", "dinov2", "clip_i")}, "cpu"
    )
    same = [Image.open(item.subject_image).convert("RGB")]
    for name in ("dino", "dinov2", "clip_i"):
        assert metrics[name](same, item) == pytest.approx(1.0, abs=1e-5), name
        assert metrics[name]([_photo(50)], item) < 0.999, name
    assert metrics["mse"](same, item) == pytest.approx(0.0, abs=1e-12)
    assert metrics["mse"]([_photo(50)], item) > 0.05


def test_clip_t_is_a_cosine_that_depends_on_the_prompt(dreambench, eval_models):
    items = load_dreambench(dreambench)
    clip_t = build_metrics(["clip_t"], {"clip_t": eval_models["clip_t"]}, "cpu")["clip_t"]
    values = [clip_t([_photo(7)], item) for item in items]
    assert all(-1.0 <= v <= 1.0 for v in values)
    assert len(set(values)) == len(values)  # the prompt matters


def test_unknown_metric_and_stray_model():
    with pytest.raises(ValueError, match="unknown metric.*fid_typo"):
        build_metrics(["fid_typo"], {}, "cpu")
    with pytest.raises(ValueError, match="not requested: dino"):
        build_metrics(["mse"], {"dino": "x"}, "cpu")
    assert set(METRICS) >= {"dino", "dinov2", "clip_i", "clip_t", "ir", "mse"}


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


def test_set_metrics_against_a_reference_folder(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    models = {"cmmd": eval_models["clip_i"], "fd_dinov2": eval_models["dinov2"], "kd_dinov2": eval_models["dinov2"]}
    names = ["mse", *models]
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "same", names, models, progress=False, reference=generated)
    }
    assert rows["cmmd"]["mean"] == 0.0 and rows["cmmd"]["n"] == 8  # identical sets
    assert rows["fd_dinov2"]["mean"] == pytest.approx(0.0, abs=1e-6)
    kd_same = rows["kd_dinov2"]["mean"]
    other = tmp_path / "other"
    other.mkdir()
    for k in range(6):
        _photo(500 + k, size=(48, 48)).save(other / f"{k}.png")
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "other-scores", names, models, progress=False, reference=other)
    }
    assert rows["cmmd"]["mean"] > 0 and rows["fd_dinov2"]["mean"] > 0 and rows["kd_dinov2"]["mean"] > kd_same
    summary = json.loads((tmp_path / "other-scores" / "summary.json").read_text())
    assert [m["metric"] for m in summary["metrics"]] == names and summary["metrics"][1]["sem"] is None


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


def test_fid_and_kid_with_inception_weights(dreambench, tmp_path):
    # Random-weight FID Inception saved like the release file; two sets of two images keep this fast.
    weights = tmp_path / "pt_inception.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), weights)
    items = load_dreambench(dreambench)[:1]
    generated = _generate(items, tmp_path / "generated")
    models = {"fid": str(weights), "kid": str(weights)}
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "s", ["fid", "kid"], models, progress=False, reference=generated)
    }
    assert rows["fid"]["mean"] == pytest.approx(0.0, abs=1e-6) and rows["fid"]["n"] == 2
    assert rows["kid"]["mean"] <= 1e-9  # unbiased estimate for identical sets is <= 0 here
    with pytest.raises(ValueError, match="FID/KID need the FID Inception weights.*--metric-model fid="):
        score(items, generated, tmp_path / "t", ["fid"], progress=False, reference=generated)


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


def test_imagenhub_generation_export_and_items(tmp_path):
    # Rows shaped like the HF datasets' (ImagenHub/Subject_Driven_Image_Generation eval, DreamBooth_Concepts train).
    concepts = [
        {"subject": "dog2", "image": _photo(1)},
        {"subject": "dog2", "image": _photo(2)},
        {"subject": "red_cartoon", "image": _photo(3)},
    ]
    rows = [
        {"uid": 0, "subject": "dog2", "prompt": "a <token> dog on the beach", "subject_id": 1},
        {"uid": 1, "subject": "red_cartoon", "prompt": "a <token> cartoon in the jungle", "subject_id": 2},
    ]
    root = export_imagenhub_generation(rows, concepts, tmp_path / "imagenhub")
    items = SUITES["imagenhub-generation"](root)
    assert [(i.id, i.class_name, i.prompt) for i in items] == [
        ("dog2/0", "dog", "a dog on the beach"),
        ("red_cartoon/1", "red cartoon", "a cartoon in the jungle"),
    ]
    assert len(items[0].references) == 2 and items[0].subject_image.name == "00.jpg"
    assert load_imagenhub_generation(root, unique_token="sks")[0].prompt == "a sks dog on the beach"
    with pytest.raises(SuiteError, match="not an imagenhub-generation export.*siso eval fetch"):
        load_imagenhub_generation(tmp_path)


def test_fetch_without_datasets_package_says_what_to_install(tmp_path, capsys):
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed here")
    assert main(["eval", "fetch", "--suite", "imagenhub-generation", "--out", str(tmp_path / "x")]) == 2
    assert "needs the datasets package: pip install datasets" in capsys.readouterr().err


def _run_args(dreambench, model_dirs, eval_models, out, *extra):
    return [
        "eval",
        "run",
        "--suite",
        "dreambench",
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
        "--num-images",
        "2",
        "--metrics",
        "dino,clip_t,mse",
        "--metric-model",
        f"dino={eval_models['dino']}",
        "--metric-model",
        f"clip_t={eval_models['clip_t']}",
        "--quiet",
        *extra,
    ]


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


@pytest.fixture
def editing_suite(tmp_path) -> Path:
    concepts = [{"subject": "duck_toy", "image": _photo(1)}, {"subject": "duck_toy", "image": _photo(2)}]
    rows = [
        {"uid": 3, "subject": "duck_toy", "image": _photo(20, size=(96, 80))},
        {"uid": 4, "subject": "duck_toy", "image": _photo(21, size=(64, 64))},
    ]
    root = export_imagenhub_editing(rows, concepts, tmp_path / "editing")
    (root / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[:24, :24] = 255  # the "subject" sits in the top-left corner
    for uid in (3, 4):
        Image.fromarray(mask).save(root / "masks" / f"{uid}.png")
    return root


@pytest.fixture
def lpips_weights(tmp_path) -> Path:
    folder = tmp_path / "lpips"
    folder.mkdir()
    torch.manual_seed(0)
    model = LPIPS()
    torch.save(model.trunk.state_dict(), folder / "alexnet-owt-7be5be79.pth")
    torch.save(model.heads.state_dict(), folder / "alex.pth")
    return folder


def test_imagenhub_editing_items(editing_suite, tmp_path):
    items = SUITES["imagenhub-editing"](editing_suite)
    assert [(i.id, i.class_name, i.prompt) for i in items] == [
        ("duck_toy/3", "duck toy", "a photo of a duck toy"),
        ("duck_toy/4", "duck toy", "a photo of a duck toy"),
    ]
    assert items[0].input_image.name == "3.jpg" and items[0].mask.name == "3.png"
    with pytest.raises(SuiteError, match="not an imagenhub-editing export"):
        SUITES["imagenhub-editing"](tmp_path)


def test_background_lpips(editing_suite, lpips_weights, tmp_path):
    items = SUITES["imagenhub-editing"](editing_suite)
    metric = build_metrics(["lpips_bg"], {"lpips_bg": str(lpips_weights)}, "cpu")["lpips_bg"]
    source = read_rgb(items[0].input_image)
    assert metric([source], items[0]) == pytest.approx(0.0, abs=1e-7)  # an untouched photo keeps its background
    assert metric([_photo(99, size=(96, 80))], items[0]) > 0
    with pytest.raises(ValueError, match="lpips_bg needs the LPIPS weights"):
        build_metrics(["lpips_bg"], {}, "cpu")
    with pytest.raises(SuiteError, match="needs an editing suite"):
        metric([source], load_dreambench_like_item(items[0]))


def load_dreambench_like_item(item):
    return dataclasses.replace(item, input_image=None, mask=None)


def test_background_lpips_detects_the_mask_when_none_is_given(editing_suite, lpips_weights, tmp_path):
    item = dataclasses.replace(SUITES["imagenhub-editing"](editing_suite)[0], mask=None)
    detector, sam = tiny.make_grounding_dino(tmp_path / "gd"), tiny.make_sam(tmp_path / "sam")
    metric = BackgroundLPIPS(str(lpips_weights), "cpu", detector=str(detector), segmenter=str(sam))
    source = read_rgb(item.input_image)
    assert metric([source], item) == pytest.approx(0.0, abs=1e-7)
    assert metric.segmenter is not None  # the tiny detector + SAM served as the mask
    # The mask is SAM's segmentation of the input at the metric's 512 px, not the detector's box.
    resized = source.resize((512, 512), Image.Resampling.LANCZOS)
    segmented = metric.segmenter.segment(resized, item.class_name)
    box = metric.segmenter.detect_box(resized, item.class_name)
    assert segmented is not None and segmented.any()
    assert torch.equal(metric._mask(item, resized), torch.from_numpy(segmented).float()[None, None])
    assert not np.array_equal(segmented, box_mask(box, (512, 512)))


def _edit_args(editing_suite, model_dirs, masks, out, *extra):
    return [
        "eval",
        "run",
        "--suite",
        "imagenhub-editing",
        "--data",
        str(editing_suite),
        "--out",
        str(out),
        "--model",
        str(model_dirs["sd"]),
        "--dino-model",
        str(model_dirs["dino"]),
        "--ir-model",
        str(model_dirs["clip"]),
        "--detector",
        str(masks["detector"]),
        "--segmenter",
        str(masks["segmenter"]),
        "--lr",
        "1e-2",
        "--max-iters",
        "2",
        "--quiet",
        *extra,
    ]


@pytest.fixture
def edit_masks(editing_suite, tmp_path) -> dict[str, Path]:
    """Item 3 (96x80) loses its mask file, so its object is detected; item 4 (64x64) keeps its file."""
    (editing_suite / "masks" / "3.png").unlink()
    return {"detector": tiny.make_grounding_dino(tmp_path / "gd"), "segmenter": tiny.make_sam(tmp_path / "sam")}


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

    monkeypatch.setattr("siso.eval.edit.edit_subject", no_edit)
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


def test_clip_t_equals_clipmodel_logits_over_scale(dreambench, eval_models):
    # Validation through an independent path: CLIPModel's own forward computes image-text cosine x logit_scale.
    from transformers import CLIPModel, CLIPTokenizer

    from siso.eval.metrics import to_batch
    from siso.losses import CLIP_MEAN, CLIP_STD, preprocess

    item = load_dreambench(dreambench)[0]
    image = _photo(8)
    ours = build_metrics(["clip_t"], {"clip_t": eval_models["clip_t"]}, "cpu")["clip_t"]([image], item)
    model = CLIPModel.from_pretrained(eval_models["clip_t"]).eval()
    tokens = CLIPTokenizer.from_pretrained(eval_models["clip_t"])([item.prompt], padding=True, return_tensors="pt")
    pixels = preprocess(to_batch([image], 28), 28, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    assert ours == pytest.approx(float(logits.logits_per_image[0, 0] / model.logit_scale.exp()), abs=1e-5)


def test_uncached_metric_model_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="DINO metric model 'nobody/dino'.*not in the local Hugging Face cache"):
        build_metrics(["dino"], {"dino": "nobody/dino"}, "cpu")


def test_a_limited_rerun_keeps_earlier_records(dreambench, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    out = tmp_path / "scores"
    score(items, generated, out, ["mse"], progress=False)
    rows = score(items[:1], generated, out, ["mse"], progress=False)
    assert rows[0]["n"] == 1  # the summary covers the items asked for ...
    assert [r["item"] for r in read_records(out / ITEMS_FILE)] == [i.id for i in items]  # ... the file keeps all


# --- bad input: one "siso: error:" line, exit 2 ------------------------------------------------------------------


def _error(capsys, args) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), captured.err
    return lines[0]


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


def test_eval_fetch_bad_outputs(tmp_path, capsys, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    args = ["eval", "fetch", "--suite", "dreambench", "--out"]
    assert "exists and is not an empty folder" in _error(capsys, [*args, str(tmp_path / "full")])
    monkeypatch.setattr("siso.eval.fetch.DREAMBENCH_REPO", str(tmp_path / "no-repo"))  # git fails, offline
    line = _error(capsys, [*args, str(tmp_path / "new")])
    assert f"git clone {tmp_path / 'no-repo'} failed (fatal:" in line and "check the internet connection" in line
