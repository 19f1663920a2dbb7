"""``siso eval score``: score any method's images on a benchmark suite (parsed here, run by `siso.eval.score`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import PartialState

from siso.eval.crop import DEFAULT_DETECTOR
from siso.eval.fetch import fetch
from siso.eval.metrics import DEFAULT_METRICS, METRICS
from siso.eval.score import score
from siso.eval.setmetrics import SET_METRICS
from siso.eval.suites import SUITES


def add_parser(sub) -> None:
    """Add the ``eval`` command group to the top-level subparsers."""
    group = sub.add_parser("eval", help="score generated images on a benchmark suite")
    commands = group.add_subparsers(dest="eval_command", required=True)
    sc = commands.add_parser(
        "score",
        help="score images made by any method, laid out as GENERATED/<item id>/*.png",
        description="Score images made by any method on a suite. Items are <subject>/<prompt index> "
        "(DreamBench: backpack/00 .. wolf_plushie/24); put each item's images in GENERATED/<item id>/. "
        "Rerunning with the same --out resumes.",
    )
    sc.add_argument("--suite", required=True, choices=sorted(SUITES), help="benchmark suite")
    sc.add_argument("--data", required=True, metavar="DIR", help="the suite's data folder (DreamBench: the repo)")
    sc.add_argument("--generated", required=True, metavar="DIR", help="root of the generated images")
    sc.add_argument("--out", required=True, metavar="DIR", help="results folder (resumed if it exists)")
    sc.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated; per item: {', '.join(METRICS)}; whole set against --reference: "
        f"{', '.join(SET_METRICS)} (default: {','.join(DEFAULT_METRICS)})",
    )
    sc.add_argument("--reference", metavar="DIR", help="reference images for the set metrics (e.g. vanilla outputs)")
    sc.add_argument(
        "--metric-model",
        action="append",
        default=[],
        metavar="NAME=ID|DIR",
        help="model for one metric, e.g. dino=facebook/dino-vits16; repeat",
    )
    sc.add_argument(
        "--crop",
        nargs="?",
        const=DEFAULT_DETECTOR,
        metavar="ID|DIR",
        help=f"crop generated images to the subject (Grounding DINO, {DEFAULT_DETECTOR}) for identity metrics",
    )
    sc.add_argument("--unique-token", default="", help="token inserted before the class name in prompts ('')")
    sc.add_argument("--device", help="torch device (default: this process's GPU under accelerate launch, else cpu)")
    sc.add_argument("--quiet", action="store_true", help="no progress bar")
    fe = commands.add_parser("fetch", help="download a suite into the layout --data expects (needs internet)")
    fe.add_argument("--suite", required=True, choices=sorted(SUITES), help="benchmark suite")
    fe.add_argument("--out", required=True, metavar="DIR", help="folder to create")


def run(args: argparse.Namespace) -> str:
    """Run a ``siso eval`` command; returns what to print (empty on non-main processes)."""
    if args.eval_command == "fetch":
        return f"fetched {args.suite} into {fetch(args.suite, args.out)}\n"
    models = {}
    for spec in args.metric_model:
        name, sep, model = spec.partition("=")
        if not sep or not model:
            raise ValueError(f"--metric-model takes NAME=ID|DIR, got {spec!r}")
        models[name] = model
    items = SUITES[args.suite](args.data, args.unique_token)
    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    score(
        items,
        args.generated,
        args.out,
        names,
        models,
        args.device,
        progress=not args.quiet,
        reference=args.reference,
        crop=args.crop,
    )
    return (Path(args.out) / "summary.md").read_text() if PartialState().is_main_process else ""
