"""`siso.eval.fetch` through `siso eval fetch`: what it refuses, and what it needs installed."""

import importlib.util

import pytest

from siso.cli import main

from ..cli.helpers import _error


def test_fetch_without_datasets_package_says_what_to_install(tmp_path, capsys):
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed here")
    assert main(["eval", "fetch", "--suite", "imagenhub-generation", "--out", str(tmp_path / "x")]) == 2
    assert "needs the datasets package: pip install datasets" in capsys.readouterr().err


def test_eval_fetch_bad_outputs(tmp_path, capsys, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    args = ["eval", "fetch", "--suite", "dreambench", "--out"]
    assert "exists and is not an empty folder" in _error(capsys, [*args, str(tmp_path / "full")])
    monkeypatch.setattr("siso.eval.fetch.DREAMBENCH_REPO", str(tmp_path / "no-repo"))  # git fails, offline
    line = _error(capsys, [*args, str(tmp_path / "new")])
    assert f"git clone {tmp_path / 'no-repo'} failed (fatal:" in line and "check the internet connection" in line
