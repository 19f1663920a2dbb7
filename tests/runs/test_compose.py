"""`siso.runs.compose`: saved subjects composed by region, polished together, and the composed folder redrawn."""

import json

import pytest
import safetensors.torch
import tiny
import torch

from siso.backbones import load_backbone
from siso.compose import Box
from siso.compose.saved import check_composable, is_composed, read_saved
from siso.config import LoraSettings
from siso.lora import adapter_parameters, add_lora, save_lora
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.models import Models
from siso.runs.run import run
from siso.runs.spec import RunSpec

PROMPT = "a dog next to a cat"


@pytest.fixture(scope="module")
def saved(model_dirs, subject_path, tmp_path_factory):
    """Two saved subjects of the tiny SD model ("dog", "cat"): random non-zero LoRA, their photo recorded."""
    root = tmp_path_factory.mktemp("saved")
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    folders = {}
    for k, name in enumerate(("dog", "cat")):
        add_lora(backbone, LoraSettings(rank=4), adapter=name)
        generator = torch.Generator().manual_seed(k)
        for param in adapter_parameters(backbone.denoiser, name).values():
            param.data = torch.randn(param.shape, generator=generator) * 0.3
        info = {"model": str(model_dirs["sd"]), "photos": [str(subject_path)], "class": name}
        folders[name] = save_lora(backbone, root / name, adapter=name, **info)
    return folders


def compose_spec(config, saved, out, boxes=(None, None), polish=0, **job):
    subjects = [s for name, box in zip(("dog", "cat"), boxes, strict=True) for s in read_saved(saved[name], name, box)]
    job = GenerationJob([PROMPT], [config.optim.seed], **job)
    return RunSpec("compose", config, RunFolder(out), job=job, saved=subjects, polish=polish)


def drawn(out) -> bytes:
    metrics = json.loads((out / "metrics.json").read_text())
    return (out / metrics["images"][0]["file"]).read_bytes()


def test_composition_and_its_redraw(make_config, saved, tmp_path):
    config = make_config("sd", max_iters=2)
    boxes = (Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1))
    metrics = run(compose_spec(config, saved, tmp_path / "a", boxes), progress=False)
    assert metrics["complete"] and "iterations" not in metrics  # nothing optimized
    folder = tmp_path / "a" / "lora"
    assert is_composed(folder)
    again = read_saved(folder)
    assert [(s.name, str(s.box), s.class_name) for s in again] == [
        ("dog", "0,0,0.5,1", "dog"),
        ("cat", "0.5,0,1,1", "cat"),
    ]
    job = GenerationJob([PROMPT], [config.optim.seed])
    run(RunSpec("compose", config, RunFolder(tmp_path / "b"), job=job, saved=again), progress=False)
    assert drawn(tmp_path / "b") == drawn(tmp_path / "a")


def test_polish_optimizes_every_subject_and_the_folder_redraws_its_best_image(make_config, saved, tmp_path):
    config = make_config("sd", max_iters=1, patience=5, lr=5e-2, min_improvement=0.0)
    boxes = (Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1))
    models = Models()
    metrics = run(compose_spec(config, saved, tmp_path / "p", boxes, polish=3), models, progress=False)
    assert metrics["complete"] and len(metrics["iterations"]) == 3 and metrics["best_iteration"] > 0
    # Both subjects' weights moved (each is corrected by its own region's terms).
    for name, sub in zip(("dog", "cat"), read_saved(tmp_path / "p" / "lora"), strict=True):
        before = safetensors.torch.load_file(saved[name] / "pytorch_lora_weights.safetensors")
        after = safetensors.torch.load_file(sub.folder / "pytorch_lora_weights.safetensors")
        assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert {"identity/dog", "identity/cat", "leakage", "loss"} <= set(metrics["iterations"][0])
    config_json = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config_json["polish"] == 3 and [s["term"] for s in config_json["subjects"]] == ["dog", "cat"]
    backbone = models.loaded
    assert not any(p.requires_grad for p in backbone.denoiser.parameters())  # frozen again
    # The composed folder draws the polish's best image again, at its prompt, seed and steps.
    spec = RunSpec(
        "compose",
        config,
        RunFolder(tmp_path / "r"),
        job=GenerationJob([config.train_prompt], [config.optim.seed], config.optim.num_inference_steps),
        saved=read_saved(tmp_path / "p" / "lora"),
    )
    run(spec, progress=False)
    assert drawn(tmp_path / "r") == (tmp_path / "p" / "best.png").read_bytes()


def test_refusals_before_anything_loads(make_config, saved, tmp_path):
    config = make_config("sd")
    with pytest.raises(ValueError, match="give every --lora a --box, or none"):
        run(compose_spec(config, saved, tmp_path / "m", (Box(0, 0, 0.5, 1), None)), Models(), progress=False)
    dog = read_saved(saved["dog"], "dog", Box(0, 0, 1, 1))[0]
    dog.info = {**dog.info, "ip_adapter": {"model": "h94/IP-Adapter"}}
    with pytest.raises(ValueError, match="learned over an IP-Adapter"):
        check_composable([dog])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "siso_subject.json").write_text('{"composed": []}')
    with pytest.raises(ValueError, match="give it no --box"):
        read_saved(tmp_path / "c", box=Box(0, 0, 1, 1))
    lost = read_saved(saved["cat"], "cat", Box(0.5, 0, 1, 1))[0]
    lost.info = {**lost.info, "photos": [str(tmp_path / "gone.png")]}
    spec = compose_spec(config, saved, tmp_path / "n", (Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1)), polish=2)
    spec.saved[1] = lost
    with pytest.raises(ValueError, match="cat keeps none"):
        run(spec, Models(), progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "n").exists()
    with pytest.raises(ValueError, match="polish is a whole number"):
        compose_spec(config, saved, tmp_path / "q", polish=-1)


def test_without_boxes_each_subject_goes_where_the_bare_model_draws_its_class(make_config, saved, tmp_path):
    detector = tiny.make_grounding_dino(tmp_path / "gd")
    spec = compose_spec(make_config("sd"), saved, tmp_path / "l")
    spec.detector = str(detector)
    notes = []
    metrics = run(spec, progress=False, notify=notes.append)
    config = json.loads((tmp_path / "l" / "config.json").read_text())
    assert [s["class"] for s in config["subjects"]] == ["dog", "cat"]
    assert all(s["box"] != "None" for s in config["subjects"])
    assert metrics["layout_notes"] == notes


@pytest.mark.parametrize("family", ["sdxl", "flux", "sana"])
def test_every_family_composes_polishes_and_redraws(family, model_dirs, subject_path, make_config, tmp_path):
    # (The SD family is the tests above.) FLUX's subjects carry a CLIP text-encoder LoRA too.
    backbone = load_backbone(str(model_dirs[family]), device="cpu")
    saved = []
    for k, (name, box) in enumerate((("dog", Box(0, 0, 0.5, 1)), ("cat", Box(0.5, 0, 1, 1)))):
        add_lora(backbone, LoraSettings(rank=4, train_text_encoder=family == "flux"), adapter=name)
        generator = torch.Generator().manual_seed(k)
        for param in adapter_parameters(backbone.denoiser, name).values():
            param.data = torch.randn(param.shape, generator=generator) * 0.3
        info = {"model": str(model_dirs[family]), "photos": [str(subject_path)], "class": name}
        saved += read_saved(save_lora(backbone, tmp_path / name, adapter=name, **info), name, box)
    config = make_config(family, max_iters=1, num_inference_steps=2, grad_steps=1)
    job = GenerationJob([config.train_prompt], [config.optim.seed], 2)
    metrics = run(RunSpec("compose", config, RunFolder(tmp_path / "p"), job=job, saved=saved, polish=2), progress=False)
    assert metrics["complete"] and len(metrics["iterations"]) == 2
    again = read_saved(tmp_path / "p" / "lora")
    run(RunSpec("compose", config, RunFolder(tmp_path / "r"), job=job, saved=again), progress=False)
    assert drawn(tmp_path / "r") == drawn(tmp_path / "p") == (tmp_path / "p" / "best.png").read_bytes()
