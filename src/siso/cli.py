"""Command line: ``siso generate`` and ``siso edit`` (``siso eval`` in `siso.eval.cli`, ``siso bench`` in
`siso.bench.cli`; the parser in `siso.options`); bad input ends in one line."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import warnings

import diffusers
import huggingface_hub
import transformers

from siso.app import cli as app_cli
from siso.backbones import (
    check_can_edit,
    check_device,
    family,
    family_defaults,
    resolve_dtype,
)
from siso.bench import BenchError
from siso.bench import cli as bench_cli
from siso.config import (
    EditConfig,
    EditSettings,
    FastSettings,
    InversionSettings,
    LoraSettings,
    OptimSettings,
    SimilaritySettings,
    SisoConfig,
    check_seed,
    with_defaults,
)
from siso.editing import EditJob
from siso.eval import cli as eval_cli
from siso.fast import tiny_vae_name
from siso.folder import GenerationJob, OutputExistsError, RunFolder, check_output_folder
from siso.hub import ModelLoadError
from siso.images import ImageError, load_subject
from siso.lora import check_lora_file, read_subject_info
from siso.masks import box_mask, load_mask
from siso.memory import is_out_of_memory, memory_settings, out_of_memory_message
from siso.options import build_parser
from siso.quantize import check_quantize
from siso.run import run_edit, run_generate, run_reuse

EXIT_USAGE, EXIT_OUT_OF_MEMORY, EXIT_INTERRUPTED = 2, 3, 130


def _settings(args: argparse.Namespace, model: str | None, num_inference_steps: int | None) -> dict:
    """The LoRA, similarity and optimization settings of the shared options: ``model``'s family defaults
    (`siso.backbones.Backbone.defaults`; none for ``None``), overridden by the flags given."""
    defaults = family_defaults(model) if model else {}
    cls = family(model) if model else None
    if args.text_encoder_lora and cls is not None and not cls.text_encoder_names:
        raise ValueError(f"{model} has no text-encoder LoRA (its text encoder stays frozen); drop --text-encoder-lora")
    return {
        "resolution": args.resolution,
        "dtype": args.dtype,
        "device": args.device,
        "lora": with_defaults(
            LoraSettings, defaults.get("lora", {}), rank=args.rank, train_text_encoder=args.text_encoder_lora
        ),
        "similarity": SimilaritySettings(
            dino_model=args.dino_model,
            ir_model=args.ir_model,
            dino_resolution=args.dino_resolution,
            ir_resolution=args.ir_resolution,
        ),
        "optim": with_defaults(
            OptimSettings,
            defaults.get("optim", {}),
            lr=args.lr,
            max_iters=args.max_iters,
            patience=args.patience,
            min_improvement=args.min_improvement,
            num_inference_steps=num_inference_steps,
            grad_steps=args.grad_steps,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
        ),
        "memory": memory_settings(args),
        "compile": args.compile,
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
    if getattr(args, "quantize", None) is not None:
        check_quantize(args.quantize, args.device)
    for name, value in vars(args).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
        if name in COUNT_OPTIONS and value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")
        check_seed(args.seed + max(getattr(args, "num_images", 1), 1) - 1, "--seed + --num-images - 1")
    if args.command == "generate" and args.lora and (args.fast or args.tiny_vae):
        raise ValueError(
            "--fast and --tiny-vae are for learning a subject (--subject); with --lora nothing is optimized"
        )
    if args.command == "generate" and args.tiny_vae and not args.fast:
        raise ValueError("--tiny-vae needs --fast")
    if args.command == "generate":  # with --lora no optimization runs, but its options' values must be valid too
        SisoConfig(**_settings(args, None if args.lora else args.model, args.train_steps))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def generate(args: argparse.Namespace, argv: list[str]) -> int:
    if args.lora:
        check_lora_file(args.lora)  # a damaged subject is the error to report, whatever the model
    model = args.model or (read_subject_info(args.lora).get("model") if args.lora else None) or "sdxl-turbo"
    settings = _settings(args, model, args.train_steps)
    optim = settings["optim"]
    job = GenerationJob(
        prompts=args.prompt,
        seeds=[args.seed + k for k in range(args.num_images)],
        num_inference_steps=optim.num_inference_steps if args.steps is None else args.steps,
        guidance_scale=optim.guidance_scale,
    )
    if args.lora:
        out = RunFolder(args.out, args.overwrite)

        def work():
            return run_reuse(
                out,
                args.lora,
                job,
                args.model,
                args.dtype,
                args.device,
                command=argv,
                progress=not args.quiet,
                quantize=args.quantize,
            )

    else:
        fast = FastSettings(args.fast, args.tiny_vae)
        if fast.enabled:
            tiny_vae_name(fast, model)  # a family without a tiny VAE is refused before anything loads
        config = SisoConfig(model=model, train_prompt=args.train_prompt or args.prompt[0], fast=fast, **settings)
        subject = load_subject(args.subject)
        out = RunFolder(args.out, args.overwrite)

        def work():
            return run_generate(
                out, config, subject, job, command=argv, subject_path=str(args.subject), progress=not args.quiet
            )

    metrics = _interruptible(work, out)
    if metrics is None:
        return EXIT_INTERRUPTED
    if "stop_reason" in metrics:
        print(f"siso: stopped ({metrics['stop_reason']}), best image at iteration {metrics['best_iteration']}")
        print(f"siso: {_cost(metrics)}")
    print(f"siso: wrote {len(metrics['images'])} image(s) and the run record to {out.path}")
    return 0


def edit(args: argparse.Namespace, argv: list[str]) -> int:
    check_can_edit(args.model)
    config = EditConfig(
        model=args.model,
        edit=EditSettings(
            strength=args.strength,
            bg_weight=args.bg_weight,
            bg_target=args.bg_target,
            mask_dilation=args.mask_dilation,
            composite=args.composite,
            feather=args.feather,
        ),
        inversion=InversionSettings.preset(args.inversion),
        **_settings(args, args.model, args.steps),
    )
    scene = load_subject(args.image, what="photo to edit")
    if args.mask:
        mask, source = load_mask(args.mask, scene.size), f"file {args.mask}"
    elif args.box:
        mask, source = box_mask(args.box, scene.size), f"box {args.box}"
    else:
        mask, source = None, "detected"
    job = EditJob(scene, mask, source, args.object, args.subject_class, args.prompt, args.detector, args.segmenter)
    subject = load_subject(args.subject)
    out = RunFolder(args.out, args.overwrite)
    paths = {"image": str(args.image), "subject": str(args.subject)}
    metrics = _interruptible(
        lambda: run_edit(out, config, job, subject, command=argv, paths=paths, progress=not args.quiet), out
    )
    if metrics is None:
        return EXIT_INTERRUPTED
    print(
        f"siso: stopped ({metrics['stop_reason']}), best edit at iteration {metrics['best_iteration']}; inversion "
        f"PSNR {metrics['inversion']['psnr']:.1f} dB; wrote {out.path / 'best.png'} and the run record"
    )
    print(f"siso: {_cost(metrics)}")
    return 0


def _cost(metrics: dict) -> str:
    """What the optimization cost: iterations, median seconds per iteration, peak memory."""
    text = f"{len(metrics['iterations'])} iterations, {metrics['seconds_per_iteration']:.2f} s/iteration (median)"
    if metrics.get("peak_memory_gb") is not None:
        text += f", peak memory {metrics['peak_memory_gb']:.2f} GB ({metrics['peak_memory_kind']})"
    return text


def _interruptible(work, out: RunFolder) -> dict | None:
    """Run ``work()``; on Ctrl-C / SIGTERM say what was kept and return None."""
    try:
        return work()
    except KeyboardInterrupt:
        if (out.path / "best.png").is_file():
            kept = "best-so-far image, LoRA and config are"
        elif (out.path / "metrics.json").is_file():
            kept = "the images made so far are"
        else:
            print("siso: interrupted before anything was made; nothing to keep", file=sys.stderr)
            return None
        print(f"siso: interrupted; the {kept} in {out.path} (metrics.json: complete = false)", file=sys.stderr)
        return None


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
        if getattr(args, "dtype", None) == "auto":  # config.json records the dtype used
            args.dtype = resolve_dtype("auto", args.device)
        if args.command == "eval":
            try:
                print(eval_cli.run(args), end="")
            except KeyboardInterrupt:
                print("siso: interrupted; finished items are kept, rerun the same command to resume", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0
        if args.command == "app":
            try:
                app_cli.run(args)
            except KeyboardInterrupt:  # while loading (once serving, Gradio ends on Ctrl-C by itself)
                print("siso: interrupted before the app started", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0
        if args.command == "bench":
            try:
                print(bench_cli.run(args), end="")
            except KeyboardInterrupt:
                print("siso: interrupted; nothing of the benchmark is kept", file=sys.stderr)
                return EXIT_INTERRUPTED
            return 0
        return (edit if args.command == "edit" else generate)(args, ["siso", *argv])
    except (
        ImageError,
        ModelLoadError,
        OutputExistsError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
        BenchError,
    ) as err:
        print(f"siso: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
        print(f"siso: error: {out_of_memory_message(err)}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
