"""The options ``generate`` and ``edit`` share (backbone, output, optimization, similarity, memory), what they mean
for a run's settings (`shared_settings`), and the checks every command's options get before anything loads."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from siso.backbones import family
from siso.backbones.quantize import check_quantize
from siso.cli.subjects import add_compose_options, compose_settings
from siso.config import (
    DTYPES,
    NEGATIVE_KINDS,
    QUANTIZE_METHODS,
    IPAdapterSettings,
    LoraSettings,
    MemorySettings,
    NegativeSettings,
    OptimSettings,
    SimilaritySettings,
    check_seed,
)
from siso.devices import check_device
from siso.runs.folder import check_output_folder


def add_shared_options(parser: argparse.ArgumentParser) -> None:
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
        metavar="ID|DIR|FILE.pth",
        help="IR term: the paper's GUIE model as its Kaggle checkpoint file (ir_features.pth), or a CLIP model "
        f"standing in for it ({SimilaritySettings.ir_model}, a substitute)",
    )
    parser.add_argument("--dino-resolution", type=int, metavar="PX", help="DINO input side (model config: 518)")
    parser.add_argument(
        "--ir-resolution", type=int, metavar="PX", help="IR input side (CLIP: model config, 224; GUIE: 290 only)"
    )
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
    add_compose_options(parser)
    add_negative_options(parser)


def add_negative_options(parser: argparse.ArgumentParser) -> None:
    """The negative targets (`siso.config.NegativeSettings`), shared by ``generate``, ``edit`` and ``eval run``."""
    defaults = NegativeSettings()
    group = parser.add_argument_group("negatives (SFO; not measured on real weights here)")
    group.add_argument(
        "--negative",
        action="append",
        choices=NEGATIVE_KINDS,
        help=f"add a negative target; repeat for both: blur (the photo blurred, radius {defaults.blur_radius:g} px, "
        f"weight {defaults.blur_weight}) or generic ({defaults.generic_images} images of 'a photo of a CLASS' drawn "
        f"once by the frozen model, InfoNCE at tau {defaults.temperature}, weight {defaults.generic_weight}; needs "
        "the subject's class: --subject-class, else detected)",
    )


def add_ip_adapter_options(parser: argparse.ArgumentParser) -> None:
    """The zero-shot start from a frozen IP-Adapter (`siso.config.IPAdapterSettings`), shared by ``generate`` and
    ``edit``."""
    group = parser.add_argument_group("zero-shot start (not in the SISO paper; not measured on real weights here)")
    group.add_argument(
        "--ip-adapter",
        metavar="ID|DIR[:WEIGHT_FILE]",
        help="start from a frozen IP-Adapter that sees the subject photo(s), the LoRA learned over it: e.g. "
        "h94/IP-Adapter (SDXL family; default weight file sdxl_models/ip-adapter_sdxl.safetensors); a saved "
        "subject (--lora) brings its own",
    )
    group.add_argument(
        "--ip-adapter-scale",
        type=float,
        metavar="S",
        help=f"with --ip-adapter: its scale ({IPAdapterSettings.scale})",
    )


def ip_adapter_settings(args: argparse.Namespace) -> IPAdapterSettings | None:
    """The --ip-adapter flags as settings; ``None``: no adapter asked for.

    Raises:
        ValueError: a malformed --ip-adapter or scale, or --ip-adapter-scale without --ip-adapter.
    """
    if args.ip_adapter is None:
        if args.ip_adapter_scale is not None:
            raise ValueError("--ip-adapter-scale needs --ip-adapter")
        return None
    scale = IPAdapterSettings.scale if args.ip_adapter_scale is None else args.ip_adapter_scale
    return IPAdapterSettings.parse(args.ip_adapter, scale)


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    """The `MemorySettings` flags, shared by ``generate``, ``edit`` and ``eval run``."""
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute the denoiser's and VAE decoder's activations in the backward pass: less memory, slower, "
        "same images",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_METHODS,
        help="quantize the frozen denoiser (LoRA stays full precision): int8 (torchao; CPU and CUDA) or nf4 "
        "(bitsandbytes; CUDA only); pip install 'siso[quantize]'",
    )
    parser.add_argument(
        "--keep-text-encoders",
        action="store_true",
        help="keep the text encoders on the device while optimizing (default: moved off, or freed on CPU, once the "
        "prompt is encoded)",
    )


def memory_settings(args: argparse.Namespace) -> MemorySettings:
    return MemorySettings(
        offload_text_encoders=not args.keep_text_encoders,
        gradient_checkpointing=args.gradient_checkpointing,
        quantize=args.quantize,
    )


def shared_settings(args: argparse.Namespace, model: str | None, num_inference_steps: int | None) -> dict:
    """The settings of the shared options, as overrides for `siso.config.SisoConfig.for_model` (a flag left out is
    ``None``: the family's default, or the settings' own, stays).

    Raises:
        ValueError: --text-encoder-lora for a family without text-encoder LoRA.
    """
    cls = family(model) if model else None
    if args.text_encoder_lora and cls is not None and not cls.text_encoder_names:
        raise ValueError(f"{model} has no text-encoder LoRA (its text encoder stays frozen); drop --text-encoder-lora")
    return {
        "resolution": args.resolution,
        "dtype": args.dtype,
        "device": args.device,
        "lora": {"rank": args.rank, "train_text_encoder": args.text_encoder_lora},
        "similarity": {
            "dino_model": args.dino_model,
            "ir_model": args.ir_model,
            "dino_resolution": args.dino_resolution,
            "ir_resolution": args.ir_resolution,
        },
        "optim": {
            "lr": args.lr,
            "max_iters": args.max_iters,
            "patience": args.patience,
            "min_improvement": args.min_improvement,
            "num_inference_steps": num_inference_steps,
            "grad_steps": args.grad_steps,
            "guidance_scale": args.guidance_scale,
            "seed": args.seed,
        },
        "memory": memory_settings(args),
        "accel": {"compile": args.compile},
        "compose": compose_settings(args),
        "ip_adapter": ip_adapter_settings(args) if hasattr(args, "ip_adapter") else None,  # generate's, eval run's
        "negatives": {"kinds": args.negative},
    }


# Options that count something (iterations, steps, images, pixels): at least 1 in every command and mode.
COUNT_OPTIONS = (
    "num_images",
    "steps",
    "train_steps",
    "grad_steps",
    "max_iters",
    "patience",
    "rank",
    "resolution",
    "dino_resolution",
    "ir_resolution",
    "limit",
    "iters",
)


def check_args(args: argparse.Namespace) -> None:
    """Reject an unusable --device or --out and bad numbers of any command before anything loads (each command's
    own flags are checked by its module).

    The configs' own validation checks the ranges of what a run uses; this also covers options without a config
    field (--num-images, --limit) and those the chosen mode ignores (--lora ignores the optimization's).

    Raises:
        ValueError: naming the option.
    """
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "out", None) is not None:
        check_output_folder(args.out)
    if getattr(args, "quantize", None) is not None:
        check_quantize(args.quantize, args.device)
    ir_model = getattr(args, "ir_model", None)
    if ir_model is not None:
        from siso.losses.guie import is_guie_checkpoint  # (imports transformers: only for a command that has it)

        if is_guie_checkpoint(ir_model) and not Path(ir_model).expanduser().is_file():
            raise ValueError(f"--ir-model: the GUIE checkpoint file {ir_model} does not exist")
    for name, value in vars(args).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
        if name in COUNT_OPTIONS and value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")
        check_seed(args.seed + max(getattr(args, "num_images", 1), 1) - 1, "--seed + --num-images - 1")
