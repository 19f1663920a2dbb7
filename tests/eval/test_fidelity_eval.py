"""`siso eval run` with the identity levers: every photo of a subject (--subject-photos all), negative targets
(--negative blur|generic, generic images drawn once per class by the frozen model), a zero-shot start from an
IP-Adapter (--ip-adapter), and the iterations and seconds per LoRA in the summary."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiny
from diffusers import UNet2DConditionModel
from PIL import Image, ImageOps

import siso.runs.negatives
import siso.runs.run
from siso.cli import main
from siso.config import SisoConfig
from siso.eval.multi import PAIRS
from siso.eval.suites import export_imagenhub_editing
from siso.lora import lora_modules
from siso.losses import CompositionLoss, SimilarityLoss
from siso.losses.negatives import as_photos
from siso.runs.models import Models
from siso.runs.negatives import draw_generic

# google/dreambooth's dataset/prompts_and_classes.txt format: two dogs (one class, for the per-class cache) and a
# teapot, one prompt each.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
dog,dog
red_teapot,teapot
dog2,dog

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


def _photo(seed: int, size=(80, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def dreambench(tmp_path_factory) -> Path:
    """A DreamBench copy whose dog has three photos, the others one."""
    dataset = tmp_path_factory.mktemp("dreambooth") / "dataset"
    for seed, subject in enumerate(["dog", "red_teapot", "dog2"]):
        (dataset / subject).mkdir(parents=True)
        _photo(seed).save(dataset / subject / "00.jpg")
    for k in (1, 2):
        _photo(10 + k).save(dataset / "dog" / f"0{k}.jpg")
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    return dataset


@pytest.fixture(scope="module")
def dreambench_multi(tmp_path_factory) -> Path:
    """A DreamBench copy with every subject of the dreambench-multi pairs (class: the name without digits); the dog
    has two photos."""
    dataset = tmp_path_factory.mktemp("dreambooth-multi") / "dataset"
    names = sorted({name for pair in PAIRS for name in pair[:2]})
    for seed, name in enumerate(names):
        (dataset / name).mkdir(parents=True)
        _photo(seed).save(dataset / name / "00.png")
    _photo(50).save(dataset / "dog" / "01.png")
    table = "\n".join(f"{name},{name.rstrip('0123456789').replace('_', ' ')}" for name in names)
    prompts = PROMPTS_AND_CLASSES[PROMPTS_AND_CLASSES.index("Prompts") :]
    (dataset / "prompts_and_classes.txt").write_text(f"Classes\n\nsubject_name,class\n{table}\n\n{prompts}")
    return dataset


def _run_args(data, model_dirs, out, *extra, suite="dreambench"):
    return [
        *("eval", "run", "--suite", suite, "--data", str(data), "--out", str(out)),
        *("--model", str(model_dirs["sd"]), "--dino-model", str(model_dirs["dino"])),
        *("--ir-model", str(model_dirs["clip"]), "--lr", "1e-2", "--max-iters", "2", "--metrics", "mse", "--quiet"),
        *extra,
    ]


@pytest.fixture
def photos_seen(monkeypatch) -> list[int]:
    """How many photos each subject the similarity losses were set to had, in order."""
    seen = []
    single, multi = SimilarityLoss.set_subject, CompositionLoss.set_subjects

    def set_subject(self, subject, generic=()):
        seen.append(len(as_photos(subject)))
        return single(self, subject, generic)

    def set_subjects(self, subjects, generic=None):
        seen.extend(len(as_photos(subject)) for subject in subjects)
        return multi(self, subjects, generic)

    monkeypatch.setattr(SimilarityLoss, "set_subject", set_subject)
    monkeypatch.setattr(CompositionLoss, "set_subjects", set_subjects)
    return seen


def _iterations(unit: Path) -> list[dict]:
    return json.loads((unit / "metrics.json").read_text())["iterations"]


def test_subject_photos_all_learns_from_every_photo(dreambench, model_dirs, tmp_path, photos_seen, capsys):
    out = tmp_path / "run"
    assert main(_run_args(dreambench, model_dirs, out, "--subject-photos", "all", "--limit", "1")) == 0
    assert photos_seen == [3]  # the dog's three photos, in one loss
    info = json.loads((out / "subjects" / "dog" / "lora" / "siso_subject.json").read_text())
    assert info["photos"] == [str(dreambench / "dog" / f"0{k}.jpg") for k in range(3)]
    config = json.loads((out / "config.json").read_text())
    assert (config["subject_photos"], config["protocol"]) == ("all", "two-stage")
    # The summary reports the one LoRA's iterations (the cap: 2) and seconds.
    summary = json.loads((out / "scores" / "summary.json").read_text())
    iterations, seconds = summary["optimization"]
    assert (iterations["metric"], iterations["mean"], iterations["n"]) == ("iterations", 2, 1)
    assert seconds["metric"] == "seconds" and seconds["mean"] == pytest.approx(
        sum(i["seconds"] for i in _iterations(out / "subjects" / "dog"))
    )
    printed = capsys.readouterr().out
    assert "| per LoRA | mean | +- s.e. | LoRAs |" in printed and "| iterations | 2.0000 | nan | 1 |" in printed


def test_negative_blur_adds_its_term_and_keeps_one_photo(dreambench, model_dirs, tmp_path, photos_seen):
    out = tmp_path / "run"
    assert main(_run_args(dreambench, model_dirs, out, "--negative", "blur", "--limit", "1")) == 0
    assert photos_seen == [1]  # the paper's protocol: the first photo only
    info = json.loads((out / "subjects" / "dog" / "lora" / "siso_subject.json").read_text())
    assert info["photos"] == [str(dreambench / "dog" / "00.jpg")]
    config = json.loads((out / "config.json").read_text())
    assert config["subject_photos"] == "1" and config["siso"]["negatives"]["kinds"] == ["blur"]
    assert config["ir_network"].endswith("a substitute for the paper's GUIE model")
    assert all("negative/blur" in i and "negative/generic" not in i for i in _iterations(out / "subjects" / "dog"))
    assert not (out / "subjects" / "dog" / "negatives").exists()


def test_negative_generic_draws_once_per_class_with_the_frozen_model(dreambench, model_dirs, tmp_path, monkeypatch):
    drawn = []

    def spy(backbone, config, class_name):
        drawn.append((class_name, bool(lora_modules(backbone))))
        return draw_generic(backbone, config, class_name)

    monkeypatch.setattr(siso.runs.negatives, "draw_generic", spy)
    out = tmp_path / "run"
    assert main(_run_args(dreambench, model_dirs, out, "--negative", "generic", "--negative", "blur")) == 0
    # dog, then teapot (after the dog's LoRA was unloaded), and dog2 reuses the dog's: never with a LoRA on.
    assert drawn == [("dog", False), ("teapot", False)]
    for unit in ("dog", "red_teapot", "dog2"):
        assert all({"negative/blur", "negative/generic"} <= set(i) for i in _iterations(out / "subjects" / unit))
    saved = [sorted(p.name for p in (out / "subjects" / u / "negatives").iterdir()) for u in ("dog", "dog2")]
    assert saved[0] == saved[1] == [f"subject-{k}.png" for k in range(1, 5)]  # generic_images: 4
    # They are the frozen model's images of "a photo of a teapot", as a fresh model draws them.
    config = SisoConfig.from_dict(json.loads((out / "config.json").read_text())["siso"])
    fresh = draw_generic(Models().backbone(config), config, "teapot")
    for k, image in enumerate(fresh, 1):
        kept = np.asarray(Image.open(out / "subjects" / "red_teapot" / "negatives" / f"subject-{k}.png"), dtype=int)
        assert np.abs(kept - np.asarray(image, dtype=int)).max() <= 1
    summary = json.loads((out / "scores" / "summary.json").read_text())
    assert [(r["metric"], r["n"]) for r in summary["optimization"]] == [("iterations", 3), ("seconds", 3)]


def test_multi_subject_items_take_every_photo_and_generic_negatives_per_subject(
    dreambench_multi, model_dirs, tmp_path, photos_seen
):
    out = tmp_path / "run"
    dino = tiny.make_dino_v1(tmp_path / "dino-v1")  # the DINO metric's (ViT-S/16 DINO, not DINOv2)
    extra = ("--subject-photos", "all", "--negative", "generic", "--limit", "1", "--metrics", "dino")
    args = [*_run_args(dreambench_multi, model_dirs, out, *extra, suite="dreambench-multi"), "--metric-model"]
    args.append(f"dino={dino}")
    assert main(args) == 0
    unit = out / "subjects" / "dog+dog2" / "00"
    info = json.loads((unit / "lora" / "siso_subject.json").read_text())
    assert [len(s["photos"]) for s in info["subjects"]] == photos_seen == [2, 1]
    assert all({"negative/generic", "identity/dog1", "identity/dog2"} <= set(i) for i in _iterations(unit))
    names = sorted(p.name for p in (unit / "negatives").iterdir())
    assert names == [f"{term}-{k}.png" for term in ("dog1", "dog2") for k in range(1, 5)]


def test_ip_adapter_start_per_subject_and_resume(dreambench, model_dirs, tmp_path, monkeypatch):
    adapter = tiny.make_ip_adapter(
        tmp_path / "ip-adapter", UNet2DConditionModel.from_pretrained(model_dirs["sdxl"] / "unet")
    )
    out = tmp_path / "run"
    args = _run_args(
        dreambench, model_dirs, out, "--limit", "2", "--ip-adapter", str(adapter), "--ip-adapter-scale", "0.7"
    )
    args[args.index("--model") + 1] = str(model_dirs["sdxl"])
    assert main(args) == 0
    # Each subject's LoRA was learned over the adapter seeing its own photo (the backbone is reloaded per subject).
    for unit, photo in (("dog", "dog/00.jpg"), ("red_teapot", "red_teapot/00.jpg")):
        lora = out / "subjects" / unit / "lora"
        info = json.loads((lora / "siso_subject.json").read_text())["ip_adapter"]
        assert (info["model"], info["scale"], info["images"]) == (str(adapter), 0.7, ["ip_adapter_image.png"])
        expected = ImageOps.exif_transpose(Image.open(dreambench / photo)).convert("RGB")
        assert np.array_equal(np.asarray(Image.open(lora / "ip_adapter_image.png")), np.asarray(expected))
    assert json.loads((out / "config.json").read_text())["siso"]["ip_adapter"]["scale"] == 0.7

    # A rerun draws a lost image again from the saved adapter and LoRA, learning nothing.
    lost = out / "generated" / "dog" / "00" / "0.png"
    before = np.asarray(Image.open(lost), dtype=int)
    lost.unlink()
    monkeypatch.setattr(siso.runs.run, "optimize_generation", None)  # calling it would fail
    assert main(args) == 0
    assert np.abs(np.asarray(Image.open(lost), dtype=int) - before).max() <= 1


@pytest.fixture(scope="module")
def editing_suite(tmp_path_factory) -> Path:
    concepts = [{"subject": "duck_toy", "image": _photo(1)}]
    rows = [{"uid": 3, "subject": "duck_toy", "image": _photo(20)}]
    return export_imagenhub_editing(rows, concepts, tmp_path_factory.mktemp("editing") / "editing")


def _error(capsys, args) -> str:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), lines
    return lines[0]


def test_bad_values_are_one_line_errors(dreambench, editing_suite, model_dirs, tmp_path, capsys):
    args = _run_args(dreambench, model_dirs, tmp_path / "a", "--subject-photos", "2")
    assert "--subject-photos takes 1 or all, got '2'" in _error(capsys, args)
    editing = ["eval", "run", "--suite", "imagenhub-editing", "--data", str(editing_suite), "--out"]
    line = _error(capsys, [*editing, str(tmp_path / "b"), "--subject-photos", "all"])
    assert "imagenhub-editing is an editing suite: its edits learn from one photo; drop --subject-photos" in line
    line = _error(capsys, [*editing, str(tmp_path / "c"), "--negative", "generic"])
    assert "imagenhub-editing is an editing suite: it takes --negative blur, not generic" in line
    line = _error(capsys, [*editing, str(tmp_path / "d"), "--ip-adapter", "h94/IP-Adapter"])
    assert "imagenhub-editing is an editing suite: its edits take no --ip-adapter" in line
    args = _run_args(dreambench, model_dirs, tmp_path / "e", "--ip-adapter-scale", "0.5")
    assert "--ip-adapter-scale needs --ip-adapter" in _error(capsys, args)
    assert not any((tmp_path / name).exists() for name in "abcde")


def test_multi_subject_items_refuse_an_ip_adapter(dreambench_multi, model_dirs, tmp_path, capsys):
    args = _run_args(dreambench_multi, model_dirs, tmp_path / "o", "--ip-adapter", "x", suite="dreambench-multi")
    assert "an IP-Adapter start takes one subject" in _error(capsys, args)
    assert not (tmp_path / "o").exists()


def test_help_names_the_identity_options(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--subject-photos 1|all" in text and "--negative {blur,generic}" in text
    assert "--ir-model ID|DIR|FILE.pth" in text and "--ip-adapter ID|DIR[:WEIGHT_FILE]" in text
