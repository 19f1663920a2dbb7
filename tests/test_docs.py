"""The docs' examples run, and their commands use only flags that exist.

A fenced block in ``docs/*.md`` that follows a ``<!-- runnable -->`` line is run: a ``python`` block in a folder that
holds tiny random-weight models and small photos under the names the docs use (a backbone name such as
``"sd-turbo"`` is replaced by a tiny model folder of that family; the default similarity networks' Hub ids are tiny
folders of the same names, which ``from_pretrained`` prefers to the Hub), a ``bash`` block line by line as
``siso ... --help`` in this process. Every ``siso`` command line in any ``bash`` block of the docs and the README
must use only flags its command takes.
"""

import re
import shlex
from pathlib import Path

import pytest
import torch

from siso import SimilaritySettings
from siso.cli import main
from siso.config import CHECK_MODEL

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
RUNNABLE = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Backbone names in the examples -> the tiny model (conftest's `model_dirs` key) of the same family.
TINY_BACKBONES = {"sd-turbo": "sd", "sdxl-turbo": "sdxl", "stabilityai/sd-turbo": "sd"}
PHOTOS = {"my_dog.jpg": (96, 72), "my_dog_2.jpg": (72, 96), "dog.jpg": (64, 64), "cat.jpg": (80, 64)}


def fenced_blocks(path: Path) -> list[tuple[str, str, bool, int]]:
    """(language, code, runnable, line) of every fenced block in ``path``."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        runnable = text[: match.start()].rstrip().endswith(RUNNABLE)
        blocks.append((match[1], match[2], runnable, text.count("\n", 0, match.start()) + 1))
    return blocks


def examples(language: str) -> list:
    return [
        pytest.param(code, id=f"{page.name}:{line}")
        for page in PAGES
        for lang, code, runnable, line in fenced_blocks(page)
        if runnable and lang == language
    ]


def test_docs_have_runnable_examples():
    assert examples("python") and examples("bash") and siso_commands(ROOT / "README.md")
    for page in PAGES:
        for lang, _, runnable, line in fenced_blocks(page):
            assert not runnable or lang in ("python", "bash"), f"{page.name}:{line}: no runner for {lang!r} blocks"


@pytest.fixture
def docs_folder(tmp_path, monkeypatch, model_dirs, subject):
    """A working folder with what the examples name: the similarity networks and photos."""
    similarity = SimilaritySettings()
    networks = ((similarity.dino_model, "dino"), (similarity.ir_model, "clip"), (CHECK_MODEL, "clip"))
    for hub_id, tiny in networks:
        (tmp_path / hub_id).parent.mkdir(parents=True)
        (tmp_path / hub_id).symlink_to(model_dirs[tiny], target_is_directory=True)
    for name, size in PHOTOS.items():
        subject.resize(size).save(tmp_path / name)
    subject.resize((480, 420)).save(tmp_path / "park.jpg")
    monkeypatch.chdir(tmp_path)
    # Models this small run fastest on one thread; on a busy machine two threads can make them many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize("code", examples("python"))
def test_python_example_runs(code, docs_folder, model_dirs):
    for name, tiny in TINY_BACKBONES.items():
        code = code.replace(f'"{name}"', repr(str(model_dirs[tiny])))
    exec(compile(code, "<docs example>", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("code", examples("bash"))
def test_help_example_runs(code, capsys):
    for line in code.strip().splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "siso" and argv[-1] == "--help", f"only `siso ... --help` runs here: {line}"
        with pytest.raises(SystemExit) as exit_:
            main(argv[1:])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {' '.join(argv[:-1])}")


def siso_commands(path: Path) -> list[list[str]]:
    """The argv of every `siso` command in the bash blocks of ``path`` (continued lines joined)."""
    commands = []
    for lang, code, _, _ in fenced_blocks(path):
        for line in code.replace("\\\n", " ").splitlines() if lang == "bash" else []:
            for part in re.split(r"&&|\|", line):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] == "siso":
                    commands.append(argv)
    return commands


@pytest.mark.parametrize("path", [*PAGES, ROOT / "README.md"], ids=lambda path: path.name)
def test_documented_flags_exist(path, capsys):
    helps = {}
    for argv in siso_commands(path):
        command = tuple(argv[1:3] if argv[1] == "eval" else argv[1:2])
        if command not in helps:
            with pytest.raises(SystemExit):
                main([*command, "--help"])
            helps[command] = capsys.readouterr().out
        usage = helps[command]
        for flag in (arg.split("=")[0] for arg in argv if arg.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage), f"{path.name}: siso {command} {flag}"


def test_readme_links_reach_pages():
    # mkdocs checks the links inside docs/ (`make docs`); the README is outside it.
    links = re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text())
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link
