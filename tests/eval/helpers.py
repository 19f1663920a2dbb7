"""What the evaluation tests share: a DreamBench-like folder's text, photos, fake "generated" images, and the
`siso eval run` command lines."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from console import accelerate_launch
from PIL import Image

# The real file's format (google/dreambooth dataset/prompts_and_classes.txt), with fewer subjects and prompts.
PROMPTS_AND_CLASSES = """Classes

subject_name,class
dog,dog
red_teapot,teapot

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the snow'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token)
]
"""


def _photo(seed: int, size=(80, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _on_two_processes(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``siso ARGS`` under ``accelerate launch`` with 2 processes; on a CPU-only machine they use gloo."""
    bin_dir = Path(sys.executable).parent
    launcher = accelerate_launch(2)
    return subprocess.run(
        [*launcher, str(bin_dir / "siso"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )


def _generate(items, root: Path, per_item: int = 2) -> Path:
    """Fake "generated" images: the subject's first photo itself (item 0) and noise."""
    for n, item in enumerate(items):
        folder = root / item.id
        folder.mkdir(parents=True)
        Image.open(item.subject_image).save(folder / "0.png")
        for k in range(1, per_item):
            _photo(100 + n * 10 + k).save(folder / f"{k}.png")
    return root


def _run_args(dreambench, model_dirs, eval_models, out, *extra):
    return [
        "eval",
        "run",
        "--suite",
        "dreambench",
        "--data",
        str(dreambench),
        "--out",
        str(out),
        "--model",
        str(model_dirs["sd"]),
        "--dino-model",
        str(model_dirs["dino"]),
        "--ir-model",
        str(model_dirs["clip"]),
        "--lr",
        "1e-2",
        "--max-iters",
        "2",
        "--num-images",
        "2",
        "--metrics",
        "dino,clip_t,mse",
        "--metric-model",
        f"dino={eval_models['dino']}",
        "--metric-model",
        f"clip_t={eval_models['clip_t']}",
        "--quiet",
        *extra,
    ]


def _edit_args(editing_suite, model_dirs, masks, out, *extra):
    return [
        "eval",
        "run",
        "--suite",
        "imagenhub-editing",
        "--data",
        str(editing_suite),
        "--out",
        str(out),
        "--model",
        str(model_dirs["sd"]),
        "--dino-model",
        str(model_dirs["dino"]),
        "--ir-model",
        str(model_dirs["clip"]),
        "--detector",
        str(masks["detector"]),
        "--segmenter",
        str(masks["segmenter"]),
        "--lr",
        "1e-2",
        "--max-iters",
        "2",
        "--quiet",
        *extra,
    ]


# Seeds of 96x96 noise in which the tiny Grounding DINO and SAM (tests/tiny.py) find a "dog" on 6-10% of the image.
FOUND_SEEDS = (200, 204, 205, 220)


def _to_refine(items, root: Path, per_item: int = 1, seeds=None) -> Path:
    """Another method's images of ``items`` to refine: 96x96 noise of ``seeds`` (one per image, item by item),
    laid out as ``ROOT/<item id>/<k>.png``."""
    seeds = iter(seeds or range(300, 300 + per_item * len(items)))
    for item in items:
        (root / item.id).mkdir(parents=True)
        for k in range(per_item):
            _photo(next(seeds), size=(96, 96)).save(root / item.id / f"{k}.png")
    return root


def _refine_args(dreambench, source, model_dirs, eval_models, out, *extra):
    """`siso eval run --suite dreambench-refine` on the tiny models: 2 iterations of DDIM-inverted refines without
    the structure term, scored with the tiny DINO and CLIP."""
    return [
        *("eval", "run", "--suite", "dreambench-refine", "--data", str(dreambench), "--from", str(source)),
        *("--out", str(out), "--model", str(model_dirs["sd"]), "--dino-model", str(model_dirs["dino"])),
        *("--ir-model", str(model_dirs["clip"]), "--check-model", str(model_dirs["clip"]), "--dino-resolution", "28"),
        *("--lr", "1e-2", "--max-iters", "2", "--inversion", "ddim", "--structure-weight", "0", "--quiet"),
        *("--metric-model", f"dino={eval_models['dino']}", "--metric-model", f"clip_i={eval_models['clip_i']}"),
        *("--metric-model", f"clip_t={eval_models['clip_t']}"),
        *extra,
    ]  # fmt: skip
