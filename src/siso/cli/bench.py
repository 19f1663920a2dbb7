"""``siso bench``: parsed here, run by `siso.bench.run_bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from siso.backbones import BACKBONES
from siso.config import DTYPES, MAX_SUBJECTS, SimilaritySettings


def add_parser(sub) -> None:
    """Add the ``bench`` command to the top-level subparsers."""
    bench = sub.add_parser(
        "bench",
        help="what a SISO iteration costs here: real-size architectures with random weights, offline",
        description="Run the SISO loop on a backbone built at its published architecture with random weights (no "
        "download) and report seconds per iteration, peak memory, FLOPs and seconds by part, for the reference "
        "code's configuration (fp32, prompt re-encoded every iteration, everything on the device) and siso's default, "
        "as a ratio to it. Each configuration runs in a fresh process, once per --subjects count (with "
        "compose-saved, it alone per count).",
    )
    bench.add_argument(
        "--model",
        default="sd-turbo",
        metavar="NAME",
        help=f"backbone: {', '.join(BACKBONES)}; with --memory also all (the four)",
    )
    bench.add_argument(
        "--memory",
        action="store_true",
        help="instead of running: estimate the GPU memory of optimizing at real size in bf16 (default, "
        "--gradient-checkpointing, + --quantize int8, + --quantize nf4; weights, LoRA + AdamW, activations kept for "
        "backward), from the models built on PyTorch's meta device (nothing runs at real size: about a minute for "
        "all four on a CPU); uses --model, --resolution and --json only",
    )
    bench.add_argument(
        "--config",
        default="all",
        metavar="NAME[,NAME...]",
        help="configuration(s) to run, in order: reference, default, fast (the opt-in fast loss, which is not the "
        "paper's loss), edit (invert a photo, then edit it), refine (invert an image at the refine's strength, then "
        "refine the subject's box with the structure term; edit and refine on backbones that edit, as ratios to "
        "default where it ran too), compose-saved (--subjects saved subjects' adapters drawn together, each in its "
        "box: K + 1 denoiser passes a step, as ratios to a single-subject --lora image; then polish iterations, as "
        "ratios to default's single-subject iteration, which runs too), or all = reference, default and (where the "
        "backbone has a tiny VAE) fast",
    )
    bench.add_argument(
        "--subjects",
        default="1",
        metavar="N[,N...]",
        help=f"subjects scored per image, 1 to {MAX_SUBJECTS}; several are each in a box, side by side, as with "
        "several --subject in siso generate; a list (1,2) measures each configuration at each count and prints "
        "their ratio to one subject; with compose-saved, its saved subjects (the other configurations then measure "
        "one) (1)",
    )
    bench.add_argument("--resolution", type=int, default=512, metavar="PX", help="image side (512)")
    bench.add_argument(
        "--grad-steps", type=int, metavar="K", help="steps with gradient (backbone's; more than its steps add steps)"
    )
    bench.add_argument("--iters", type=int, default=5, metavar="N", help="measured iterations (5)")
    bench.add_argument("--warmup", type=int, default=1, metavar="N", help="iterations run first, not measured (1)")
    bench.add_argument("--dtype", choices=DTYPES, default="auto", help="the default configuration's dtype (auto)")
    bench.add_argument(
        "--gradient-checkpointing", action="store_true", help="measure the default configuration with it"
    )
    bench.add_argument("--compile", action="store_true", help="measure siso's configurations with --compile")
    bench.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures here")
    # A diffusers folder instead of a name, with its similarity networks: the tests' tiny models.
    for name in ("dino", "ir"):
        bench.add_argument(f"--{name}-model", metavar="DIR", help=argparse.SUPPRESS)
    bench.add_argument("--dino-resolution", type=int, help=argparse.SUPPRESS)
    bench.add_argument("--tiny-vae", metavar="DIR", help=argparse.SUPPRESS)


def _configs(args: argparse.Namespace) -> tuple[str, ...]:
    """The configurations ``--config`` names (`siso.bench.BenchSettings` refuses unknown ones)."""
    if args.config != "all":
        return tuple(name.strip() for name in args.config.split(","))
    from siso.bench.architectures import tiny_vae_models

    has_tiny_vae = args.tiny_vae is not None or args.model in tiny_vae_models()
    return ("reference", "default", "fast") if has_tiny_vae else ("reference", "default")


def _check_json(path: str | None) -> None:
    """Refuse a ``--json`` file whose folder does not exist, before anything runs."""
    if path and not Path(path).absolute().parent.is_dir():
        raise ValueError(f"--json {path}: folder {Path(path).absolute().parent} does not exist")


def _subjects(text: str) -> tuple[int, ...]:
    """The subject counts ``--subjects`` names (`siso.bench.BenchSettings` checks their range).

    Raises:
        ValueError: not whole numbers separated by commas.
    """
    try:
        return tuple(int(count) for count in text.split(","))
    except ValueError:
        raise ValueError(f"--subjects takes subject counts, e.g. 2 or 1,2; got {text!r}") from None


def run(args: argparse.Namespace) -> str:
    """Run ``siso bench``; returns the report to print.

    Raises:
        ValueError: a model it cannot build, a ``--json`` file it could not write, a bad setting (all before any
            model is built), or a configuration that failed in its worker process (its last error line).
    """
    from siso.bench import BenchError, BenchSettings, report, run_bench
    from siso.io import write_json

    if args.memory:
        return _memory(args)
    similarity = None
    if args.dino_model or args.ir_model:
        similarity = SimilaritySettings(
            dino_model=args.dino_model, ir_model=args.ir_model, dino_resolution=args.dino_resolution
        )
    elif args.model not in BACKBONES:
        raise ValueError(f"siso bench builds these backbones at their published architectures: {', '.join(BACKBONES)}")
    _check_json(args.json)
    settings = BenchSettings(
        model=args.model,
        configs=_configs(args),
        resolution=args.resolution,
        grad_steps=args.grad_steps,
        iters=args.iters,
        warmup=args.warmup,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
        device=args.device,
        similarity=similarity,
        tiny_vae=args.tiny_vae,
        subjects=_subjects(args.subjects),
    )
    try:
        result = run_bench(settings)
    except BenchError as err:  # a worker's failure: one line, as bad input is
        raise ValueError(str(err)) from None
    if args.json:
        write_json(args.json, result)
    return report(result)


def _memory(args: argparse.Namespace) -> str:
    """``siso bench --memory``: `siso.bench.estimate_model` of ``--model`` (or of all four); returns the table.

    Raises:
        ValueError: a model with no published architecture, a resolution that is not a multiple of 64, or a
            ``--json`` file in a folder that does not exist.
    """
    from siso.bench import estimate_model, memory_report
    from siso.bench.architectures import MODELS
    from siso.io import write_json

    models = MODELS if args.model == "all" else (args.model,)
    if any(model not in MODELS for model in models):
        raise ValueError(f"siso bench --memory estimates these backbones: {', '.join(MODELS)} or all")
    if args.resolution < 64 or args.resolution % 64:
        raise ValueError(f"resolution must be a multiple of 64, got {args.resolution}")
    _check_json(args.json)
    estimates = {model: estimate_model(model, args.resolution) for model in models}
    if args.json:
        write_json(args.json, {"dtype": "bf16", "resolution": args.resolution, "estimates": estimates})
    return memory_report(estimates, args.resolution)
