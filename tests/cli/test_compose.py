"""``siso generate`` and ``siso edit`` with several subjects: outputs, the saved subject in a stock pipeline, the
layout found with a detector, and bad input."""

import json

import numpy as np
import pytest
import tiny
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from siso.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    yy, xx = np.mgrid[0:72, 0:96]
    dog = np.stack([xx * 2.6, yy * 3.4, 255 - xx * 1.3], -1)
    cat = np.stack([255 - yy * 3, xx * 2, yy * 2 + 40], -1)
    paths = []
    for name, img in (("dog", dog), ("cat", cat)):
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"{name}.png")
        paths.append(str(root / f"{name}.png"))
    return paths


@pytest.fixture
def pair_args(model_dirs, similarity_args, photos):
    dog, cat = photos
    return [
        "generate",
        "--subject",
        dog,
        "--subject-class",
        "dog",
        "--box",
        "0,0.1,0.5,0.9",
        "--subject",
        cat,
        "--subject-class",
        "cat",
        "--box",
        "16,0,32,32",
        "--model",
        str(model_dirs["sd"]),
        *similarity_args,
        "--lr",
        "1e-2",
        "--max-iters",
        "3",
        "--min-improvement",
        "0",
        "--quiet",
    ]


def test_two_subjects_in_boxes_end_to_end_and_the_saved_subject_in_a_stock_pipeline(
    capsys, pair_args, model_dirs, tmp_path
):
    out = tmp_path / "pair"
    assert main([*pair_args, "--prompt", "a dog and a cat on the grass", "--out", str(out)]) == 0
    for name in ("best.png", "iterations.png", "loss.png", "lora/pytorch_lora_weights.safetensors", "images"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert [(s["class"], s["box"], s["box_pixels"], s["placed"]) for s in config["subjects"]] == [
        ("dog", "0,0.1,0.5,0.9", [0, 3, 16, 29], "given"),
        ("cat", "16,0,32,32", [16, 0, 32, 32], "given"),
    ]
    assert config["siso"]["compose"] == {
        "worst_weight": 0.5,
        "leak_weight": 0.5,
        "leak_margin": 0.05,
        "presence_weight": 0.5,
        "presence_top_k": 0.2,
    }
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["iterations"]) == 3 and metrics["best_iteration"] > 0
    assert {"identity/dog", "identity/cat", "leakage", "presence", "dino", "ir", "loss"} <= set(
        metrics["iterations"][0]
    )
    subject_info = json.loads((out / "lora" / "siso_subject.json").read_text())
    assert [s["class"] for s in subject_info["subjects"]] == ["dog", "cat"]

    # The saved subject redraws the image with --lora, and in a stock pipeline.
    again = tmp_path / "again"
    assert (
        main(["generate", "--lora", str(out / "lora"), "--prompt", "a dog and a cat on the grass", "--out", str(again)])
        == 0
    )
    image = json.loads((out / "metrics.json").read_text())["images"][0]["file"]
    ours = np.asarray(Image.open(out / image))
    assert np.array_equal(ours, np.asarray(Image.open(again / image)))
    stock = StableDiffusionPipeline.from_pretrained(model_dirs["sd"])
    stock.load_lora_weights(out / "lora")
    drawn = stock(
        "a dog and a cat on the grass",
        num_inference_steps=1,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.array_equal(np.asarray(drawn), ours)


def test_without_boxes_the_layout_comes_from_the_first_image(capsys, pair_args, tmp_path):
    detector = tiny.make_grounding_dino(tmp_path / "gd")
    args = [a for a in pair_args if a not in ("--box", "0,0.1,0.5,0.9", "16,0,32,32")]
    out = tmp_path / "layout"
    assert (
        main([*args, "--detector", str(detector), "--max-iters", "1", "--prompt", "a dog and a cat", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    placed = [s["placed"] for s in config["subjects"]]
    assert set(placed) <= {"detected", "default slot"}
    for k, (subject, source) in enumerate(zip(config["subjects"], placed, strict=True), 1):
        note = f"siso: no {subject['class']} found in the first image: subject {k} goes in the default slot"
        assert (note in printed) == (source == "default slot")
        assert (
            subject["box_pixels"][2] > subject["box_pixels"][0] and subject["box_pixels"][3] > subject["box_pixels"][1]
        )


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("siso: error: "), lines
    return lines[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"16,0,32,32": "16,0,40,32"}, "reaches outside the 32x32 image"),
        ({"16,0,32,32": "16,0,16,32"}, "is empty"),
        ({"16,0,32,32": "20,0,10,32"}, "is empty"),
        ({"16,0,32,32": "a,b,c,d"}, "is not 4 numbers"),
        ({"16,0,32,32": "0,0,nan,1"}, "non-finite"),
        ({"--box": ["--box", "0,0,1,1", "--box"]}, "--box given twice for subject 1"),
        (
            {"--subject-class": ["--subject-class", "dog", "--subject-class"]},
            "--subject-class given twice for subject 1",
        ),
        ({"--subject": ["--subject", "MISSING.png", "--subject"]}, "subject photo not found"),
        ({"--subject": ["--subject", "x.png"] * 3 + ["--subject"]}, "5 subjects given; at most 4"),
    ],
)
def test_bad_subjects_and_boxes(capsys, pair_args, tmp_path, change, message):
    args = []
    for arg in pair_args:
        new = change.get(arg, arg)
        if isinstance(new, list) and not args.count(arg) and arg not in args:
            args.extend(new)
        else:
            args.append(new if isinstance(new, str) else arg)
    args = [str(tmp_path / a) if a == "MISSING.png" else a for a in args]
    line = _error(capsys, [*args, "--prompt", "a dog and a cat", "--out", str(tmp_path / "run")])
    assert message in line
    assert not (tmp_path / "run").exists()


def test_edit_puts_each_subject_into_its_region(capsys, model_dirs, similarity_args, photos, tmp_path):
    dog, cat = photos
    yy, xx = np.mgrid[0:96, 0:128]
    scene = tmp_path / "park.png"
    Image.fromarray(np.stack([255 - xx * 1.5, yy * 2.0, xx * 1.2 + 40], -1).clip(0, 255).astype(np.uint8)).save(scene)
    region = np.zeros((96, 128), np.uint8)
    region[40:90, 70:120] = 255
    Image.fromarray(region).save(tmp_path / "cat_region.png")
    out = tmp_path / "edit"
    args = ["edit", "--image", str(scene), "--subject", dog, "--subject-class", "dog", "--box", "5,20,60,90"]
    args += ["--subject", cat, "--subject-class", "cat", "--mask", str(tmp_path / "cat_region.png")]
    args += ["--model", str(model_dirs["sd"]), *similarity_args, "--inversion", "ddim", "--max-iters", "2", "--quiet"]
    args += ["--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["prompt"] == "a photo of a dog and a cat"
    assert [s["class"] for s in config["subjects"]] == ["dog", "cat"]
    assert config["mask"] == f"box 5,20,60,90; file {tmp_path / 'cat_region.png'}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"identity/dog", "identity/cat", "leakage", "background", "similarity"} <= set(metrics["iterations"][0])
    mask = np.asarray(Image.open(out / "mask.png")) > 127  # the union of the two regions, at model resolution
    assert mask[:, : mask.shape[1] // 2].any() and mask[:, mask.shape[1] // 2 :].any() and not mask.all()


def test_edit_with_several_subjects_needs_a_region_for_each(capsys, model_dirs, photos, tmp_path):
    dog, cat = photos
    scene = tmp_path / "park.png"
    Image.new("RGB", (128, 96), "green").save(scene)
    args = ["edit", "--image", str(scene), "--subject", dog, "--box", "5,20,60,90", "--subject", cat]
    line = _error(capsys, [*args, "--model", str(model_dirs["sd"]), "--out", str(tmp_path / "run")])
    assert "subject 2 has no region: give --box or --mask after its --subject" in line
    line = _error(capsys, [*args, "--box", "1,1,9,9", "--object", "dog", "--out", str(tmp_path / "run")])
    assert "--object names what to detect for one subject" in line
