"""``siso eval score|run|fetch``: parsed here, run by `siso.eval.score`, `siso.eval.generate` (generation suites),
`siso.eval.edit` (editing suites), `siso.eval.refine` (refine suites) and `siso.eval.fetch`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from accelerate import PartialState

from siso.backbones import check_can_edit, config_for
from siso.cli import eval_saved
from siso.cli.options import add_setting_options, declared_settings, dest, shared_settings
from siso.config import EditConfig, RefineConfig, SisoConfig
from siso.eval.edit import edit_suite
from siso.eval.fetch import fetch
from siso.eval.gains import check_refine_metrics
from siso.eval.generate import PROTOCOLS, generate_suite, plan, unit_metrics
from siso.eval.metrics import DEFAULT_METRICS, METRICS
from siso.eval.refine import refine_suite
from siso.eval.score import score
from siso.eval.setmetrics import SET_METRICS
from siso.eval.suites import EDITING_SUITES, REFINE_SUITES, SUITES, SuiteError
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER

ITEM_IDS = (
    "Items are <subject>/<prompt index> (DreamBench: backpack/00 .. wolf_plushie/24), <subject>/<uid> (ImagenHub) or "
    "<subject A>+<subject B>/<prompt index> (dreambench-multi: dog+dog2/00 .. robot_toy+candle/04)."
)
# The settings of dreambench-refine's runs that no other suite's runs have: `RefineConfig`'s edit, inversion and
# refine groups, but its start (the suite refines --from's images). Their flags default to None (not given).
REFINE_GROUPS = ("edit", "inversion", "refine")
REFINE_ONLY = [
    field
    for group, field in declared_settings(without=("refine.start",), config=RefineConfig)
    if group in REFINE_GROUPS
]
REFINE_DESTS = {dest(field) for field in REFINE_ONLY}


def _suite_and_scoring_options(parser: argparse.ArgumentParser, suites=SUITES) -> None:
    parser.add_argument("--suite", required=True, choices=sorted(suites), help="benchmark suite")
    parser.add_argument("--data", required=True, metavar="DIR", help="the suite's folder (see `siso eval fetch`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder (resumed if it exists)")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated; per item: {', '.join(METRICS)}; whole set against --reference: "
        f"{', '.join(SET_METRICS)} (default: {','.join(DEFAULT_METRICS)}; dreambench-refine also takes lpips, of the "
        "refined image to its input, with --metric-model lpips=DIR)",
    )
    parser.add_argument("--reference", metavar="DIR", help="reference images for the set metrics (vanilla outputs)")
    parser.add_argument(
        "--metric-model",
        action="append",
        default=[],
        metavar="NAME=ID|DIR|FILE",
        help="model for one metric, e.g. dino=facebook/dino-vits16, fid=PATH.pth or ir=ir_features.pth (GUIE); repeat",
    )
    parser.add_argument(
        "--crop",
        nargs="?",
        const=DEFAULT_DETECTOR,
        metavar="ID|DIR",
        help=f"crop generated images to the subject (Grounding DINO, {DEFAULT_DETECTOR}) for identity metrics; "
        "dreambench-multi: detect each subject and score its IoU with its box (identity stays on the boxes)",
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="ID|DIR",
        help=f"editing suites, items without a mask file: Grounding DINO that finds the object ({DEFAULT_DETECTOR}); "
        "for siso's edits and lpips_bg",
    )
    parser.add_argument(
        "--segmenter",
        default=DEFAULT_SEGMENTER,
        metavar="ID|DIR",
        help=f"SAM that segments the detected object into its mask ({DEFAULT_SEGMENTER})",
    )
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=0.3,
        metavar="SCORE",
        help="minimum detection score for those masks (0.3, the paper's)",
    )
    parser.add_argument("--unique-token", default="", help="token inserted before the class name in prompts ('')")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N items")
    parser.add_argument("--device", help="torch device (default: this process's GPU under accelerate launch, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub) -> None:
    """Add the ``eval`` command group to the top-level subparsers."""
    group = sub.add_parser(
        "eval", help="benchmark suites: score any method's images, or generate or edit with siso and score"
    )
    commands = group.add_subparsers(dest="eval_command", required=True)
    sc = commands.add_parser(
        "score",
        help="score images made by any method, laid out as GENERATED/<item id>/*.png",
        description=f"Score images made by any method on a suite. {ITEM_IDS} Put each item's images in "
        "GENERATED/<item id>/. Rerunning with the same --out resumes; under `accelerate launch` items are sharded.",
    )
    _suite_and_scoring_options(sc)
    sc.add_argument("--generated", required=True, metavar="DIR", help="root of the generated images")
    ru = commands.add_parser(
        "run",
        help="generate (or, on imagenhub-editing, edit) every item with siso, then score (OUT/generated, "
        "OUT/subjects, OUT/scores)",
        description=f"Generate with siso, then score. {ITEM_IDS} On an editing suite (imagenhub-editing) each item's "
        "photo is edited instead, once: the object is the suite's masks/<uid>.png, else detected (--detector, "
        "--segmenter); an item where nothing is detected is skipped and named in the final error. On "
        "dreambench-refine another method's images (--from DIR, laid out as DIR/<item id>/<k>.png) are refined with "
        "siso, each in the region where its item's class is detected (or --region all), and scored before and "
        "after; the edit and refine settings (--strength .. --check-model) are its alone. Rerunning with the same "
        "--out resumes; under `accelerate launch` units and items are sharded across processes.",
    )
    _suite_and_scoring_options(ru, {**SUITES, **REFINE_SUITES})
    ru.add_argument("--model", default="sdxl-turbo", metavar="NAME|DIR", help="backbone (sdxl-turbo)")
    ru.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="generation suites: two-stage (default): one LoRA per subject from 'a photo of a <class>' "
        "(dreambench-multi: per subject pair); per-prompt (dreambench-multi's default): one per item, with its "
        "prompt (editing suites always learn one per item, and refuse this option)",
    )
    ru.add_argument(
        "--subject-photos",
        default="1",
        metavar="1|all",
        help="generation suites and dreambench-refine: learn each subject from its first photo (1, the paper's "
        "protocol) or from every photo of its folder (all: the loss averages over them)",
    )
    ru.add_argument(
        "--num-images",
        type=int,
        default=1,
        metavar="K",
        help="images per item (1; editing: only 1; dreambench-refine: the first K of each item's --from images)",
    )
    ru.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="generation: steps of the final images (default: 1); editing and dreambench-refine: the schedule that "
        "--strength cuts, as `siso edit --steps` (default: the family's, 4; 20 for Sana)",
    )
    ru.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        help="dreambench-refine: the images to refine, another method's, laid out as DIR/<item id>/<k>.png",
    )
    ru.add_argument(
        "--region",
        choices=("all",),
        help="dreambench-refine: all: refine every image whole (default: the region of the item's class, detected "
        "with --detector and --segmenter)",
    )
    eval_saved.add_options(ru)
    add_setting_options(ru, without=("device",))  # --device is the scoring's too (above)
    others = [field.name for field in dataclasses.fields(RefineConfig) if field.name not in REFINE_GROUPS]
    add_setting_options(ru, without=[*others, "refine.start"], config=RefineConfig)
    ru.set_defaults(**{dest(field): None for field in REFINE_ONLY})
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
            raise ValueError(f"--metric-model takes NAME=ID|DIR|FILE, got {spec!r}")
        models[name] = model
    if args.eval_command == "run" and args.subject_photos not in ("1", "all"):
        raise ValueError(f"--subject-photos takes 1 or all, got {args.subject_photos!r}")
    config = run_config(args) if args.eval_command == "run" else None
    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--metrics names no metric; known: {', '.join([*METRICS, *SET_METRICS])}")
    if args.suite in REFINE_SUITES:
        check_refine_metrics(names, models)
    items = SUITES[REFINE_SUITES.get(args.suite, args.suite)](args.data, args.unique_token)[: args.limit]
    if args.suite in REFINE_SUITES:
        return _refine(args, items, config, names, models)
    if args.eval_command == "run" and args.from_saved:
        return eval_saved.run(args, items, config, names, models)
    scores = Path(args.out)
    generated = args.generated if args.eval_command == "score" else None
    optimizations = None  # the LoRAs behind the images: eval run's own
    if args.eval_command == "run":
        if args.suite in EDITING_SUITES:
            generated, skipped = edit_suite(
                items, args.out, config, args.detector, args.segmenter, args.box_threshold, progress=not args.quiet
            )
            if PartialState().is_main_process:
                for item_id, reason in skipped.items():
                    print(f"siso: skipped {item_id}: {reason}", file=sys.stderr)
            units = [item.id for item in items]
        else:
            generated = generate_suite(
                items,
                args.out,
                config,
                args.num_images,
                args.steps,
                args.protocol,
                progress=not args.quiet,
                all_photos=args.subject_photos == "all",
            )
            units = [unit.name for unit in plan(items, args.protocol)]
        optimizations = unit_metrics(args.out, units)
        scores = Path(args.out) / "scores"
    score(
        items,
        generated,
        scores,
        names,
        models,
        args.device,
        progress=not args.quiet,
        reference=args.reference,
        crop=args.crop,
        detector=args.detector,
        segmenter=args.segmenter,
        box_threshold=args.box_threshold,
        optimizations=optimizations,
    )
    return (scores / "summary.md").read_text() if PartialState().is_main_process else ""


def _refine(args: argparse.Namespace, items: list, config: RefineConfig, names: list[str], models: dict) -> str:
    """``eval run`` on a refine suite (`siso.eval.refine`): refine --from's images and score them before and after.

    Raises:
        SuiteError: --from lacks images of some items (before anything is written), or some items were skipped
            (after the others are refined and summarized).
    """
    scores, skipped = refine_suite(
        items,
        args.from_dir,
        args.out,
        config,
        names,
        models,
        args.num_images,
        args.region,
        args.subject_photos == "all",
        args.detector,
        args.segmenter,
        args.box_threshold,
        progress=not args.quiet,
    )
    if skipped:
        if PartialState().is_main_process:
            for item_id, reason in skipped.items():
                print(f"siso: skipped {item_id}: {reason}", file=sys.stderr)
        raise SuiteError(
            f"{len(skipped)} of {len(items)} items were not refined (first: {next(iter(skipped))}); the others are "
            f"scored in {scores}"
        )
    return (scores / "summary.md").read_text() if PartialState().is_main_process else ""


def run_config(args: argparse.Namespace) -> SisoConfig:
    """The settings of an ``eval run``: the family's defaults, then its flags (`siso.cli.options.shared_settings`);
    an `EditConfig` on an editing suite (its schedule: --steps), a `RefineConfig` on a refine suite (the same), else
    a `SisoConfig`.

    Raises:
        ValueError: a flag the suite does not take, or a value the settings refuse.
    """
    editing, refining = args.suite in EDITING_SUITES, args.suite in REFINE_SUITES
    eval_saved.check(args)
    given = [field.declaration.flag for field in REFINE_ONLY if getattr(args, dest(field)) is not None]
    if not refining:
        for flag, value in (("--from", args.from_dir), ("--region", args.region)):
            if value is not None:
                raise ValueError(f"{flag} is dreambench-refine's (the images it refines); {args.suite} takes none")
        if given:
            raise ValueError(f"{', '.join(given)}: settings of dreambench-refine's runs, not of {args.suite}")
    # A refine setting not given is left out, so that the kind of run's own default stays.
    read = argparse.Namespace(**{k: v for k, v in vars(args).items() if v is not None or k not in REFINE_DESTS})
    overrides = shared_settings(read, args.model, args.steps if editing or refining else None, _config_class(args))
    if refining:
        return _refine_config(args, overrides)
    if not editing:
        return config_for(SisoConfig, args.model, **overrides)
    if args.num_images != 1:
        raise ValueError(f"{args.suite} is an editing suite: one edit per item, so --num-images must be 1")
    if args.protocol is not None:
        raise ValueError(f"{args.suite} is an editing suite: each item gets its own LoRA; drop --protocol")
    if args.subject_photos != "1":
        raise ValueError(f"{args.suite} is an editing suite: its edits learn from one photo; drop --subject-photos")
    if "generic" in (args.negative or ()):
        raise ValueError(f"{args.suite} is an editing suite: it takes --negative blur, not generic")
    if args.ip_adapter is not None:
        raise ValueError(f"{args.suite} is an editing suite: its edits take no --ip-adapter")
    if args.train_steps is not None:
        raise ValueError(f"{args.suite} is an editing suite: its schedule is --steps; drop --train-steps")
    check_can_edit(args.model)
    return config_for(EditConfig, args.model, **overrides)


def _config_class(args: argparse.Namespace) -> type[SisoConfig]:
    if args.suite in REFINE_SUITES:
        return RefineConfig
    return EditConfig if args.suite in EDITING_SUITES else SisoConfig


def _refine_config(args: argparse.Namespace, overrides: dict) -> RefineConfig:
    """A refine suite's settings, refusing what it does not take."""
    if args.from_dir is None:
        raise ValueError(
            f"{args.suite} refines another method's images: give them with --from DIR (DIR/<item id>/<k>.png)"
        )
    if args.protocol is not None:
        raise ValueError(f"{args.suite} refines each image with its own LoRA; drop --protocol")
    if args.ip_adapter is not None:
        raise ValueError(f"{args.suite} refines --from's images; an IP-Adapter draws none here: drop --ip-adapter")
    if args.train_steps is not None:
        raise ValueError(f"{args.suite}'s schedule is --steps; drop --train-steps")
    if args.reference is not None or args.crop is not None:
        raise ValueError(f"{args.suite} scores each image before and after, on its region: drop --reference and --crop")
    check_can_edit(args.model)
    return config_for(RefineConfig, args.model, **overrides)
