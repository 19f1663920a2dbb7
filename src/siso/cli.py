"""Command line: ``siso generate``. Parses, validates and calls `siso.run`; bad input ends in one clear line."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import warnings

import diffusers
import huggingface_hub
import transformers

from siso.backbones import BACKBONES, check_device
from siso.config import DTYPES, LoraSettings, OptimSettings, SimilaritySettings, SisoConfig, check_seed
from siso.eval import cli as eval_cli
from siso.hub import ModelLoadError
from siso.images import ImageError, load_subject
from siso.run import GenerationJob, OutputExistsError, RunFolder, check_output_folder, run_generate, run_reuse

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


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
    gen.add_argument("--out", required=True, metavar="DIR", help="output folder (must be new or empty)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing siso output folder")
    gen.add_argument("--seed", type=int, default=0, help="seed of the optimization noise and first image (0)")
    gen.add_argument(
        "--num-images", type=int, default=1, metavar="K", help="images per prompt, seeds SEED..SEED+K-1 (1)"
    )
    gen.add_argument(
        "--steps", type=int, metavar="N", help="denoising steps of the final images (default: --train-steps)"
    )
    gen.add_argument("--train-steps", type=int, default=1, metavar="N", help="denoising steps while optimizing (1)")
    gen.add_argument(
        "--grad-steps", type=int, default=1, metavar="K", help="last steps that keep gradients while optimizing (1)"
    )
    gen.add_argument("--guidance-scale", type=float, default=0.0, help="CFG scale; turbo models use 0 (0)")
    gen.add_argument("--max-iters", type=int, default=OptimSettings.max_iters, help="iteration cap (50)")
    gen.add_argument("--lr", type=float, default=OptimSettings.lr, help="AdamW learning rate (3e-4, the paper's)")
    gen.add_argument(
        "--patience",
        type=int,
        default=OptimSettings.patience,
        help="early stopping: iterations without improvement (7)",
    )
    gen.add_argument(
        "--min-improvement",
        type=float,
        default=OptimSettings.min_improvement,
        help="early stopping: relative improvement that counts (0.03)",
    )
    gen.add_argument("--rank", type=int, default=LoraSettings.rank, help="LoRA rank (4)")
    gen.add_argument("--text-encoder-lora", action="store_true", help="also train LoRA on the text encoder(s)")
    gen.add_argument(
        "--dino-model",
        default=SimilaritySettings.dino_model,
        metavar="ID|DIR",
        help=f"DINOv2 model ({SimilaritySettings.dino_model})",
    )
    gen.add_argument(
        "--ir-model",
        default=SimilaritySettings.ir_model,
        metavar="ID|DIR",
        help=f"CLIP vision model for the IR term ({SimilaritySettings.ir_model}, a substitute for the "
        "paper's GUIE model)",
    )
    gen.add_argument("--dino-resolution", type=int, metavar="PX", help="DINO input side (model config: 518)")
    gen.add_argument("--ir-resolution", type=int, metavar="PX", help="IR input side (model config: 224)")
    gen.add_argument("--resolution", type=int, metavar="PX", help="image side (backbone default: 512)")
    gen.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    gen.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype (fp32; bf16 recommended on GPU)")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    eval_cli.add_parser(sub)
    return parser


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
)


def check_args(args: argparse.Namespace) -> None:
    """Reject an unusable --device or --out and bad numbers of any command before anything loads.

    The configs' own validation checks the ranges of what a run uses; this also covers options without a config
    field (--num-images, --limit) and those the chosen mode ignores (--lora ignores the optimization's).

    Raises:
        ValueError: naming the option.
    """
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "out", None) is not None:
        check_output_folder(args.out)
    for name, value in vars(args).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
        if name in COUNT_OPTIONS and value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")
        check_seed(args.seed + max(getattr(args, "num_images", 1), 1) - 1, "--seed + --num-images - 1")
    if args.command == "generate" and args.lora:  # no optimization then, but its options' values must be valid
        SisoConfig(
            resolution=args.resolution,
            lora=LoraSettings(rank=args.rank),
            similarity=SimilaritySettings(dino_resolution=args.dino_resolution, ir_resolution=args.ir_resolution),
            optim=OptimSettings(
                lr=args.lr,
                max_iters=args.max_iters,
                patience=args.patience,
                min_improvement=args.min_improvement,
                num_inference_steps=args.train_steps,
                grad_steps=args.grad_steps,
            ),
        )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def generate(args: argparse.Namespace, argv: list[str]) -> int:
    job = GenerationJob(
        prompts=args.prompt,
        seeds=[args.seed + k for k in range(args.num_images)],
        num_inference_steps=args.train_steps if args.steps is None else args.steps,
        guidance_scale=args.guidance_scale,
    )
    if args.lora:
        out = RunFolder(args.out, args.overwrite)

        def work():
            return run_reuse(
                out, args.lora, job, args.model, args.dtype, args.device, command=argv, progress=not args.quiet
            )

    else:
        config = SisoConfig(
            model=args.model or "sdxl-turbo",
            train_prompt=args.train_prompt or args.prompt[0],
            resolution=args.resolution,
            dtype=args.dtype,
            device=args.device,
            lora=LoraSettings(rank=args.rank, train_text_encoder=args.text_encoder_lora),
            similarity=SimilaritySettings(
                dino_model=args.dino_model,
                ir_model=args.ir_model,
                dino_resolution=args.dino_resolution,
                ir_resolution=args.ir_resolution,
            ),
            optim=OptimSettings(
                lr=args.lr,
                max_iters=args.max_iters,
                patience=args.patience,
                min_improvement=args.min_improvement,
                num_inference_steps=args.train_steps,
                grad_steps=args.grad_steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            ),
        )
        subject = load_subject(args.subject)
        out = RunFolder(args.out, args.overwrite)

        def work():
            return run_generate(
                out, config, subject, job, command=argv, subject_path=str(args.subject), progress=not args.quiet
            )

    try:
        metrics = work()
    except KeyboardInterrupt:
        if (out.path / "best.png").is_file():
            kept = "best-so-far image, LoRA and config are"
        elif (out.path / "metrics.json").is_file():
            kept = "the images made so far are"
        else:
            print("siso: interrupted before anything was made; nothing to keep", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"siso: interrupted; the {kept} in {out.path} (metrics.json: complete = false)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if "stop_reason" in metrics:
        print(f"siso: stopped ({metrics['stop_reason']}), best image at iteration {metrics['best_iteration']}")
    print(f"siso: wrote {len(metrics['images'])} image(s) and the run record to {out.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    # Per-component "Loading ..." bars would bury our own; keep the Hub's download bars (first run).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()
    # diffusers 0.42 passes an argument huggingface_hub deprecated; the warning is noise for our users.
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM saves like Ctrl-C
    try:
        check_args(args)
        if args.command == "eval":
            try:
                print(eval_cli.run(args), end="")
            except KeyboardInterrupt:
                print("siso: interrupted; finished items are kept, rerun the same command to resume", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0
        return generate(args, ["siso", *argv])
    except (ImageError, ModelLoadError, OutputExistsError, FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f"siso: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
