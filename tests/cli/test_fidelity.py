"""``siso generate`` and ``siso edit`` with several photos of one subject (``--subject DIR``) and with negative
targets (``--negative``): what they write, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from siso.cli import main


def _photo(path, shift):
    yy, xx = np.mgrid[0:72, 0:96]
    img = np.stack([xx * 2.6 + shift, yy * 3.4, 255 - xx * 1.3 - shift], -1)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def dog(tmp_path_factory):
    """A folder of two photos of "the dog" (and a file that is not one)."""
    folder = tmp_path_factory.mktemp("dog")
    for k, name in enumerate(("a.png", "b.webp")):
        _photo(folder / name, 40 * k)
    (folder / "notes.txt").write_text("taken in the park")
    return folder


@pytest.fixture
def args(model_dirs, similarity_args):
    return [
        "generate",
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--prompt",
        "a photo of a dog",
        "--lr",
        "1e-2",
        "--min-improvement",
        "0",
        "--quiet",
    ]


def _iteration0(out) -> dict:
    return json.loads((out / "metrics.json").read_text())["iterations"][0]


def test_a_folder_is_one_subject_whose_loss_is_the_mean_over_its_photos(args, dog, tmp_path):
    out = tmp_path / "all"
    assert main([*args, "--subject", str(dog), "--max-iters", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["subject"] == str(dog)
    assert config["ir_network"].endswith(", a substitute for the paper's GUIE model")
    assert config["photos"] == [str(dog / name) for name in ("a.png", "b.webp")]
    assert json.loads((out / "metrics.json").read_text())["complete"]
    # Iteration 0 is the frozen model's image whatever the subject: its terms are the mean over the photos.
    alone = []
    for name in ("a.png", "b.webp"):
        single = tmp_path / name
        assert main([*args, "--subject", str(dog / name), "--max-iters", "1", "--out", str(single)]) == 0
        assert json.loads((single / "config.json").read_text())["photos"] == [str(dog / name)]
        alone.append(_iteration0(single))
    for term in ("dino", "ir", "loss"):
        assert _iteration0(out)[term] == pytest.approx(np.mean([a[term] for a in alone]), rel=1e-5, abs=1e-6)


def test_negatives_are_terms_of_their_own_and_the_generic_images_are_kept(args, subject_path, tmp_path):
    out = tmp_path / "negatives"
    argv = [*args, "--subject", str(subject_path), "--subject-class", "dog", "--max-iters", "2"]
    assert main([*argv, "--negative", "blur", "--negative", "generic", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["siso"]["negatives"]["kinds"] == ["blur", "generic"]
    metrics = json.loads((out / "metrics.json").read_text())
    for iteration in metrics["iterations"]:
        assert {"negative/blur", "negative/generic"} <= set(iteration)
        assert np.isfinite(iteration["negative/blur"]) and iteration["negative/generic"] > 0
    assert sorted(p.name for p in (out / "negatives").iterdir()) == [f"subject-{k}.png" for k in range(1, 5)]
    # The same run without negatives: the similarity terms agree, the total does not.
    plain = tmp_path / "plain"
    assert main([*argv, "--max-iters", "1", "--out", str(plain)]) == 0
    assert _iteration0(plain)["dino"] == pytest.approx(_iteration0(out)["dino"], abs=1e-6)
    assert "negative/blur" not in _iteration0(plain) and not (plain / "negatives").exists()
    assert _iteration0(out)["loss"] > _iteration0(plain)["loss"]


def test_edit_with_a_folder_and_a_blur_negative(model_dirs, similarity_args, dog, subject_path, tmp_path):
    out = tmp_path / "edit"
    argv = [
        "edit",
        "--image",
        str(subject_path),
        "--subject",
        str(dog),
        "--subject-class",
        "dog",
        "--box",
        "10,10,60,60",
        "--model",
        str(model_dirs["sdxl"]),
        *similarity_args,
        "--max-iters",
        "2",
        "--negative",
        "blur",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["photos"] == [str(dog / name) for name in ("a.png", "b.webp")]
    assert "negative/blur" in _iteration0(out)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), lines
    return lines[0]


def test_an_empty_folder_or_a_broken_photo_is_one_line_naming_it(capsys, args, dog, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos yet")
    line = _error(capsys, [*args, "--subject", str(empty), "--out", str(tmp_path / "run")])
    assert f"subject folder {empty} holds no photo" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    _photo(broken / "a.png", 0)
    (broken / "b.jpg").write_bytes(b"\xff\xd8 cut short")
    line = _error(capsys, [*args, "--subject", str(broken), "--out", str(tmp_path / "run")])
    assert str(broken / "b.jpg") in line
    assert not (tmp_path / "run").exists()


def test_a_generic_negative_whose_class_cannot_be_told_is_one_line(capsys, args, subject_path, tmp_path):
    argv = [*args, "--subject", str(subject_path), "--negative", "generic", "--detector", str(tmp_path / "no-gd")]
    line = _error(capsys, [*argv, "--out", str(tmp_path / "run")])
    assert "no-gd" in line and "--subject-class" in line
    assert not (tmp_path / "run").exists()


def test_negatives_with_a_saved_subject_are_refused(capsys, tmp_path):
    argv = ["generate", "--lora", str(tmp_path / "lora"), "--prompt", "a dog", "--negative", "blur"]
    line = _error(capsys, [*argv, "--out", str(tmp_path / "run")])
    assert "--negative are for learning a subject" in line and "with --lora nothing is optimized" in line
