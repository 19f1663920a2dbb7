"""``siso generate --lora A --box ... --lora B --box ...``: saved subjects composed by region with no new learning,
``--polish``, the composed folder redrawn and kept in the library, and bad input refused in one line."""

import json

import numpy as np
import pytest
from PIL import Image

from siso.cli import main
from siso.library import Library

from ..test_library import make_subject
from .helpers import _error

PAIR = ["--prompt", "a dog next to a dog", "--seed", "4", "--quiet"]


@pytest.fixture(scope="module")
def library(tmp_path_factory, model_dirs, subject_path, similarity_args):
    """A library holding two subjects learned on the tiny SD model (``dog``, ``pup``)."""
    root = tmp_path_factory.mktemp("compose-saved")
    learn = ["generate", "--subject", str(subject_path), "--model", str(model_dirs["sd"]), *similarity_args]
    for name, lr in (("dog", "5e-2"), ("pup", "1e-1")):
        args = [*learn, "--lr", lr, "--prompt", "a dog", "--max-iters", "2", "--quiet", "--out", str(root / name)]
        assert main([*args, "--save-as", name, "--library", str(root / "lib")]) == 0
    return root / "lib"


def image(out):
    (file,) = (out / "images").iterdir()
    return np.asarray(Image.open(file))


def test_compose_by_name_redraw_and_keep(capsys, library, similarity_args, tmp_path):
    pair = ["generate", "--library", str(library), "--lora", "dog", "--box", "0,0,0.5,1", "--lora", "pup", "--box"]
    assert main([*pair, "0.5,0,1,1", *PAIR, "--out", str(tmp_path / "a"), "--save-as", "pair"]) == 0
    assert f"siso: saved the subject as pair in {library}\n" in capsys.readouterr().out
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert [(s["name"], s["box"]) for s in config["subjects"]] == [("dog", "0,0,0.5,1"), ("pup", "0.5,0,1,1")]
    # The composed folder, by path and by its library name, draws the same image.
    redraw = ["generate", "--library", str(library), *PAIR]
    assert main([*redraw, "--lora", str(tmp_path / "a" / "lora"), "--out", str(tmp_path / "b")]) == 0
    assert main([*redraw, "--lora", "pair", "--out", str(tmp_path / "c")]) == 0
    assert np.array_equal(image(tmp_path / "a"), image(tmp_path / "b"))
    assert np.array_equal(image(tmp_path / "a"), image(tmp_path / "c"))
    entry = next(e for e in Library(library).entries() if e.name == "pair")
    assert entry.photos == 2  # each subject's photo, kept with the composition
    # One subject over the whole image draws what --lora alone draws.
    whole = ["generate", "--library", str(library), "--lora", "dog", *PAIR]
    assert main([*whole, "--box", "0,0,1,1", "--out", str(tmp_path / "w")]) == 0
    assert main([*whole, "--out", str(tmp_path / "alone")]) == 0
    assert np.array_equal(image(tmp_path / "w"), image(tmp_path / "alone"))


def test_polish(capsys, library, similarity_args, tmp_path):
    pair = ["generate", "--library", str(library), "--lora", "dog", "--box", "0,0,0.5,1", "--lora", "pup"]
    args = [*pair, "--box", "0.5,0,1,1", *similarity_args, "--prompt", "a dog next to a dog", "--quiet"]
    assert main([*args, "--polish", "2", "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "siso: stopped (" in printed and "iterations" in printed
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert len(metrics["iterations"]) <= 2 and (tmp_path / "p" / "best.png").is_file()
    assert json.loads((tmp_path / "p" / "lora" / "siso_subject.json").read_text())["polish"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lora", "dog", "--box", "0,0,0.5,1", "--lora", "pup"], "give every --lora a --box, or none"),
        (["--lora", "dog", "--polish", "-1"], "--polish must be >= 0, got -1"),
        (["--lora", "dgo"], "'dgo' is neither a subject folder nor"),
        (["--lora", "dog", "--blend-edge", "-2"], "--blend-edge must be >= 0 pixels"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, library, tmp_path, extra, message):
    line = _error(capsys, ["generate", "--library", str(library), *extra, *PAIR, "--out", str(tmp_path / "o")])
    assert message in line
    if "dgo" in extra:
        assert "dog" in line  # the nearest names
    assert not (tmp_path / "o").exists()


def test_refusals_that_need_the_subjects(capsys, library, subject_path, model_dirs, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    line = _error(capsys, ["generate", "--subject", str(subject_path), "--polish", "2", *PAIR, *out])
    assert "--polish is for composing saved subjects (--lora)" in line
    flux = make_subject(tmp_path / "flux", [subject_path], model=str(model_dirs["flux"]))
    line = _error(capsys, ["generate", "--library", str(library), "--lora", "dog", "--lora", str(flux), *PAIR, *out])
    assert "flux was learned on" in line and "(Flux family)" in line
    pair = tmp_path / "pair"
    (pair / "subject1").mkdir(parents=True)
    (pair / "siso_subject.json").write_text(json.dumps({"model": str(model_dirs["sd"]), "composed": []}))
    line = _error(capsys, ["generate", "--library", str(library), "--lora", str(pair), "--lora", "dog", *PAIR, *out])
    assert "is a composition of saved subjects: draw it alone" in line
    assert not (tmp_path / "o").exists()
