"""``siso eval run --from-saved [--polish N]``: its options, parsed here and run by `siso.eval.fromsaved`."""

from __future__ import annotations

import argparse

from accelerate import PartialState

from siso.config import SisoConfig
from siso.eval.fromsaved import POLISH, from_saved_suite

SUITE = "dreambench-multi"


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--from-saved`` and ``--polish`` to ``eval run``'s parser."""
    parser.add_argument(
        "--from-saved",
        action="store_true",
        help=f"{SUITE}: besides learning each item's subjects together, learn each subject alone once (OUT/saved) "
        "and compose every item from the saved subjects in its boxes with no new learning, as composed "
        "(OUT/composed) and polished (OUT/polished); print the three side by side (OUT/summary.md)",
    )
    parser.add_argument(
        "--polish",
        type=int,
        metavar="N",
        help=f"--from-saved: iterations of the composed loss of the polished arm, with early stopping ({POLISH})",
    )


def check(args: argparse.Namespace) -> None:
    """Refuse ``--polish`` without ``--from-saved``, and ``--from-saved`` on a suite without subject pairs."""
    if args.polish is not None and not args.from_saved:
        raise ValueError("--polish N polishes --from-saved's compositions: add --from-saved")
    if args.from_saved and args.suite != SUITE:
        raise ValueError(f"--from-saved composes the subject pairs of {SUITE}; {args.suite} has none")


def run(args: argparse.Namespace, items: list, config: SisoConfig, names: list[str], models: dict) -> str:
    """Run the three arms and score them; returns the side-by-side summary (empty on non-main processes)."""
    summary = from_saved_suite(
        items,
        args.out,
        config,
        names,
        models,
        num_images=args.num_images,
        num_inference_steps=args.steps,
        protocol=args.protocol,
        polish=POLISH if args.polish is None else args.polish,
        progress=not args.quiet,
        all_photos=args.subject_photos == "all",
        device=args.device,
        reference=args.reference,
        crop=args.crop,
        detector=args.detector,
        segmenter=args.segmenter,
        box_threshold=args.box_threshold,
    )
    return summary.read_text() if PartialState().is_main_process else ""
