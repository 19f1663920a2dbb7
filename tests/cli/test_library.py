"""``siso subjects`` and ``--save-as``/``--library``/``--lora NAME`` (`siso.cli.library`): a subject learned with
``--save-as`` is listed, redrawn by name exactly as from its run folder, and removed; bad values write nothing."""

import json

import numpy as np
import pytest
from PIL import Image

from siso.cli import main
from siso.library import Library

from ..test_library import make_subject
from .helpers import NOT_A_MODEL, _error, _generate_args


@pytest.fixture
def fake_entry(tmp_path, subject_path):
    """A library at tmp_path/lib holding ``dog``, a subject learned on flux-schnell (never loaded)."""
    library = Library(tmp_path / "lib")
    library.save(make_subject(tmp_path / "fake", [subject_path], model="flux-schnell"), "dog")
    return library


def test_save_as_list_redraw_by_name_and_remove(capsys, base_args, tmp_path, subject_path):
    lib, run = tmp_path / "lib", tmp_path / "run"
    learn = [*base_args, "--prompt", "a dog", "--max-iters", "2", "--quiet", "--out", str(run)]
    assert main([*learn, "--save-as", "my dog", "--library", str(lib)]) == 0
    assert f"siso: saved the subject as my dog in {lib}\n" in capsys.readouterr().out
    assert (lib / "my dog" / "photos" / subject_path.name).read_bytes() == subject_path.read_bytes()

    assert main(["subjects", "--library", str(lib)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"1 saved subject(s) in {lib}"
    assert lines[1].split() == ["name", "family", "photos", "size", "saved"]
    assert lines[2].startswith("my dog  sd-turbo  1       ") and " kB  " in lines[2]

    draw = ["--prompt", "a dog in Paris", "--seed", "5", "--quiet"]
    by_name = ["generate", "--lora", "my dog", "--library", str(lib), *draw, "--out", str(tmp_path / "a")]
    assert main([*by_name, "--save-as", "copy"]) == 0  # a reused subject is saved as it is
    assert f"siso: saved the subject as copy in {lib}\n" in capsys.readouterr().out
    assert main(["generate", "--lora", str(run / "lora"), *draw, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    (image,) = (tmp_path / "a" / "images").iterdir()
    assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(tmp_path / "b" / "images" / image.name)))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["lora"] == str(lib / "my dog")

    assert Library(lib).entries()[0].photos == 1 and Library(lib).names() == ["copy", "my dog"]
    for name in ("my dog", "copy"):
        assert main(["subjects", "remove", name, "--library", str(lib)]) == 0
        assert capsys.readouterr().out == f"siso: removed {name} from {lib}\n"
    assert main(["subjects", "--library", str(lib)]) == 0
    assert capsys.readouterr().out.startswith(f"siso: no subjects in {lib} yet")


def test_a_taken_name_and_the_library_of_the_environment(
    capsys, monkeypatch, model_dirs, fake_entry, tmp_path, subject_path
):
    monkeypatch.setenv("SISO_LIBRARY", str(fake_entry.root))
    lora = make_subject(tmp_path / "sd", [subject_path], model=str(model_dirs["sd"]))  # a zero LoRA fits nothing
    args = ["generate", "--lora", str(lora), "--prompt", "x", "--out", str(tmp_path / "o"), "--quiet"]
    line = _error(capsys, [*args, "--save-as", "dog"])  # taken: checked before anything loads
    assert "already has a subject named dog; pass --overwrite" in line and not (tmp_path / "o").exists()
    assert main(["subjects"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["dog", "flux-schnell", "1"]


@pytest.mark.parametrize("command", ["generate", "edit", "refine"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--save-as", "a/b"], "subject name 'a/b' is not a plain file name: it holds a path separator"),
        (["--save-as", ".."], "subject name '..' is not a plain file name"),
        (["--save-as", ""], "subject name '' is not a plain file name: it is empty"),
        (["--save-as", "dog"], "already has a subject named dog; pass --overwrite to replace it"),
        (["--save-as", "cat", "--library", "{file}"], "cannot write the subject library {file}: {file} is a file"),
        (["--library", "{lib}"], "--library is where --save-as saves"),
    ],
)
def test_bad_save_values_write_nothing(capsys, fake_entry, subject_path, tmp_path, command, extra, message):
    (tmp_path / "file").write_text("x")
    where = {"file": str(tmp_path / "file"), "lib": str(fake_entry.root)}
    extra = [arg.format(**where) for arg in extra]
    args = {
        "generate": [*_generate_args(subject_path, tmp_path), "--model", NOT_A_MODEL],
        "edit": ["edit", "--image", str(subject_path), "--subject", str(subject_path), "--model", NOT_A_MODEL],
        "refine": ["refine", "--image", str(subject_path), "--subject", str(subject_path), "--model", NOT_A_MODEL],
    }[command]
    if "--save-as" in extra and "--library" not in extra:
        extra += ["--library", str(fake_entry.root)]
    line = _error(capsys, [*args, "--out", str(tmp_path / "o"), *extra])
    assert message.format(**where) in line
    if "is a file" in message:
        assert "pass --library DIR or set SISO_LIBRARY" in line
    assert not (tmp_path / "o").exists() and fake_entry.names() == ["dog"]


def test_lora_names_that_cannot_be_used(capsys, fake_entry, model_dirs, tmp_path):
    reuse = ["generate", "--library", str(fake_entry.root), "--prompt", "x", "--out", str(tmp_path / "o")]
    line = _error(capsys, [*reuse, "--lora", "dgo"])
    assert f"'dgo' is neither a subject folder nor a subject in the subject library {fake_entry.root}" in line
    assert "(nearest: dog); `siso subjects` lists them" in line
    line = _error(capsys, [*reuse, "--lora", "dog", "--model", str(model_dirs["sd"])])
    assert line.startswith("siso: error: dog was learned on flux-schnell (Flux family); ")
    assert f"{model_dirs['sd']} is of the SD family" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["subjects", "remove"], "name the subject to remove: siso subjects remove NAME"),
        (["subjects", "list", "dog"], "to remove dog: siso subjects remove dog"),
        (["subjects", "remove", "dgo"], "'dgo' is not a subject in the subject library {lib} (nearest: dog)"),
    ],
)
def test_subjects_bad_input(capsys, fake_entry, argv, message):
    line = _error(capsys, [*argv, "--library", str(fake_entry.root)])
    assert message.format(lib=fake_entry.root) in line
    assert fake_entry.names() == ["dog"]
