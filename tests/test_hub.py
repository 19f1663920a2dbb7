"""`siso.hub`: loading failures become one `ModelLoadError` naming the model and the fix."""

import shutil

import pytest
from transformers import Dinov2Model

from siso.hub import ModelLoadError, damaged_files, load_pretrained, require_model_type


def test_damaged_files_are_the_ones_that_do_not_read(model_dirs, tmp_path):
    folder = shutil.copytree(model_dirs["dino"], tmp_path / "dino")
    assert damaged_files(folder) == []
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (folder / "config.json").write_text("{")
    assert damaged_files(folder) == [folder / "config.json", weights]


def test_load_pretrained_names_the_model_and_the_fix(model_dirs, tmp_path):
    assert isinstance(load_pretrained(Dinov2Model.from_pretrained, str(model_dirs["dino"]), "DINO"), Dinov2Model)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="DINO '.*weights.bin' is a file; pass a model directory or a Hub id"):
        load_pretrained(Dinov2Model.from_pretrained, str(tmp_path / "weights.bin"), "DINO")
    with pytest.raises(ModelLoadError, match="DINO directory .*/missing does not exist"):
        load_pretrained(Dinov2Model.from_pretrained, str(tmp_path / "missing"), "DINO")
    folder = shutil.copytree(model_dirs["dino"], tmp_path / "dino")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"model.safetensors is damaged .*Fix: download or save the model again"):
        load_pretrained(Dinov2Model.from_pretrained, str(folder), "DINO")
    with pytest.raises(ModelLoadError, match="'nobody/no-such-model': it is not in the local Hugging Face cache"):
        load_pretrained(Dinov2Model.from_pretrained, "nobody/no-such-model", "DINO")


def test_require_model_type_refuses_another_architecture(model_dirs):
    require_model_type(str(model_dirs["dino"]), "DINO", "dinov2", "DINOv2")
    with pytest.raises(ModelLoadError, match="DINO '.*' is a clip_vision_model model, not DINOv2"):
        require_model_type(str(model_dirs["clip"]), "DINO", "dinov2", "DINOv2")
