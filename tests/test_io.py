"""Atomic writes (`siso.io`): a reader sees the old file or the new one, never half of one, and JSON is strict."""

import json

import numpy as np
import pytest
from PIL import Image

from siso.io import atomic_folder, save_image, write_atomic, write_json


def test_json_is_strict_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"loss": float("nan"), "terms": [1.0, float("inf")], "nested": {"x": (1, 2)}})
    assert json.loads(path.read_text()) == {"loss": None, "terms": [1.0, None], "nested": {"x": [1, 2]}}
    write_atomic(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # nothing left beside it


def test_an_image_that_fails_to_encode_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "best.png"
    old = Image.fromarray(np.full((4, 4, 3), 7, np.uint8))
    save_image(old, path)

    def broken(self, fp, format=None, **params):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_image(Image.new("RGB", (4, 4)), path)
    monkeypatch.undo()
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(old))


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "lora"
    with atomic_folder(target) as partial:
        (partial / "a.txt").write_text("1")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_folder(target) as partial:
        (partial / "b.txt").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the earlier folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]  # and no half-written one beside it
    with atomic_folder(target) as partial:
        (partial / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # replaced whole
