"""The ``siso`` command line's parser: ``generate`` and ``edit`` here, ``eval`` and ``bench`` from their packages
(`siso.eval.cli`, `siso.bench.cli`). What the options mean for a run is in `siso.cli`."""

from __future__ import annotations

import argparse

from siso.app import cli as app_cli
from siso.backbones import BACKBONES
from siso.bench import cli as bench_cli
from siso.config import (
    BACKGROUND_TARGETS,
    DTYPES,
    INVERSION_METHODS,
    EditSettings,
    LoraSettings,
    OptimSettings,
    SimilaritySettings,
)
from siso.eval import cli as eval_cli
from siso.masks import DEFAULT_DETECTOR, DEFAULT_SEGMENTER
from siso.memory import add_memory_options


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    """Options that mean the same for ``generate`` and ``edit``: backbone, output, optimization, similarity."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing siso output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the optimization noise (0)")
    parser.add_argument(
        "--grad-steps", type=int, metavar="K", help="last steps that keep gradients while optimizing (backbone's; 1)"
    )
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (backbone's; turbo models: 0)")
    parser.add_argument("--max-iters", type=int, help=f"iteration cap ({OptimSettings.max_iters})")
    parser.add_argument("--lr", type=float, help=f"AdamW learning rate (backbone's; {OptimSettings.lr} for SD/SDXL)")
    parser.add_argument(
        "--patience",
        type=int,
        help=f"early stopping: iterations without improvement (backbone's; {OptimSettings.patience} for SD/SDXL)",
    )
    parser.add_argument(
        "--min-improvement",
        type=float,
        help=f"early stopping: relative improvement that counts ({OptimSettings.min_improvement})",
    )
    parser.add_argument("--rank", type=int, default=LoraSettings.rank, help="LoRA rank (4)")
    parser.add_argument("--text-encoder-lora", action="store_true", help="also train LoRA on the text encoder(s)")
    parser.add_argument(
        "--dino-model",
        default=SimilaritySettings.dino_model,
        metavar="ID|DIR",
        help=f"DINOv2 model ({SimilaritySettings.dino_model})",
    )
    parser.add_argument(
        "--ir-model",
        default=SimilaritySettings.ir_model,
        metavar="ID|DIR",
        help=f"CLIP vision model for the IR term ({SimilaritySettings.ir_model}, a substitute for the "
        "paper's GUIE model)",
    )
    parser.add_argument("--dino-resolution", type=int, metavar="PX", help="DINO input side (model config: 518)")
    parser.add_argument("--ir-resolution", type=int, metavar="PX", help="IR input side (model config: 224)")
    parser.add_argument("--resolution", type=int, metavar="PX", help="image side (backbone default: 512)")
    parser.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: bf16 on CUDA, fp32 elsewhere)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the denoiser, VAE decoder and similarity networks while optimizing: the first iteration "
        "takes the compile time (minutes); on a CPU it needs a C++ compiler",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_memory_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siso", description="Single-image subject-driven generation (SISO).")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="learn a subject from one photo and generate it, or generate from a saved subject (--lora)",
        description="Learn a subject from one photo (--subject) and generate every --prompt with it, or reuse a "
        "saved subject (--lora) without optimizing.",
    )
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--subject", metavar="PHOTO", help="the subject photo (non-square photos are centre-cropped)")
    src.add_argument("--lora", metavar="DIR", help="a saved subject: the lora/ folder of an earlier run")
    gen.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="prompt to generate; repeat")
    gen.add_argument(
        "--train-prompt",
        metavar="TEXT",
        help="prompt to optimize with (default: the first --prompt); a simple one such as "
        "'a photo of a dog' transfers best to rich prompts (two-stage use)",
    )
    gen.add_argument(
        "--model",
        metavar="NAME|DIR",
        help=f"backbone: {', '.join(BACKBONES)} (default sdxl-turbo), a Hub id or a local diffusers "
        "folder; with --lora, defaults to the subject's model",
    )
    gen.add_argument(
        "--num-images", type=int, default=1, metavar="K", help="images per prompt, seeds SEED..SEED+K-1 (1)"
    )
    gen.add_argument(
        "--steps", type=int, metavar="N", help="denoising steps of the final images (default: --train-steps)"
    )
    gen.add_argument(
        "--train-steps", type=int, metavar="N", help="denoising steps while optimizing (backbone's; 1 for SD/SDXL)"
    )
    gen.add_argument(
        "--fast",
        action="store_true",
        help="the fast loss: a tiny VAE decoder (TAESD) scores the images and DINOv2 sees 224 px; NOT the paper's "
        "loss, and its effect on quality is not measured (final images still use the full VAE)",
    )
    gen.add_argument(
        "--tiny-vae", metavar="ID|DIR", help="with --fast: the AutoencoderTiny to use (default: the backbone's)"
    )
    _add_shared_options(gen)

    edit = sub.add_parser(
        "edit",
        help="put the subject of one photo into another photo, in place of an object (subject swap)",
        description="Replace an object in a photo (--image) with your subject (--subject): the object's mask comes "
        "from --mask, --box, or detection of --object (default: the subject's class) with Grounding DINO + SAM.",
    )
    edit.add_argument("--image", required=True, metavar="SCENE", help="the photo to edit")
    edit.add_argument("--subject", required=True, metavar="PHOTO", help="the subject photo")
    where = edit.add_mutually_exclusive_group()
    where.add_argument("--mask", metavar="PNG", help="object mask, white = object (any size of the photo's aspect)")
    where.add_argument("--box", metavar="x0,y0,x1,y1", help="object box in pixels of the photo to edit")
    where.add_argument("--object", metavar="NAME", help="object to detect and replace (default: the subject class)")
    edit.add_argument(
        "--subject-class", metavar="NAME", help="the subject's class, e.g. dog (default: detected in the subject photo)"
    )
    edit.add_argument("--prompt", metavar="TEXT", help="edit prompt (default: 'a photo of a <subject class>')")
    edit.add_argument(
        "--model", default="sdxl-turbo", metavar="NAME|DIR", help="sdxl-turbo (default), sd-turbo, a Hub id or a folder"
    )
    edit.add_argument(
        "--steps", type=int, default=4, metavar="N", help="schedule length that --strength cuts (4: t=749,499,249)"
    )
    edit.add_argument("--strength", type=float, default=EditSettings.strength, help="share of steps redone (0.75)")
    edit.add_argument(
        "--inversion", choices=INVERSION_METHODS, default="renoise", help="renoise (default) or plain ddim inversion"
    )
    edit.add_argument(
        "--bg-weight", type=float, default=EditSettings.bg_weight, metavar="C", help="background loss weight (10)"
    )
    edit.add_argument(
        "--bg-target",
        choices=BACKGROUND_TARGETS,
        default="input",
        help="background compared with the input photo (default, reference code) or the inversion's "
        "reconstruction (paper Eq. 3)",
    )
    edit.add_argument(
        "--mask-dilation",
        type=int,
        default=EditSettings.mask_dilation,
        metavar="PX",
        help=f"grow the mask by PX pixels at model resolution ({EditSettings.mask_dilation})",
    )
    edit.add_argument(
        "--composite", action="store_true", help="paste the input back outside the (feathered) mask in best.png"
    )
    edit.add_argument(
        "--feather",
        type=int,
        default=EditSettings.feather,
        metavar="PX",
        help=f"--composite blends over PX pixels inside the mask ({EditSettings.feather})",
    )
    edit.add_argument(
        "--detector", default=DEFAULT_DETECTOR, metavar="ID|DIR", help=f"Grounding DINO ({DEFAULT_DETECTOR})"
    )
    edit.add_argument("--segmenter", default=DEFAULT_SEGMENTER, metavar="ID|DIR", help=f"SAM ({DEFAULT_SEGMENTER})")
    _add_shared_options(edit)
    eval_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    app_cli.add_parser(sub)
    return parser
