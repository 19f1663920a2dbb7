"""``siso edit``: put the subject of one photo into another photo, in place of an object (subject swap)."""

from __future__ import annotations

import argparse

from siso.backbones import check_can_edit
from siso.cli.errors import EXIT_INTERRUPTED, interruptible
from siso.cli.generate import cost
from siso.cli.options import add_shared_options, shared_settings
from siso.config import BACKGROUND_TARGETS, INVERSION_METHODS, EditConfig, EditSettings, InversionSettings
from siso.images import load_subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.run import run_edit
from siso.vision.masks import box_mask, load_mask
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER


def add_parser(sub) -> None:
    """Add the ``edit`` command to the top-level subparsers."""
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
    add_shared_options(edit)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``siso edit``; returns the exit code."""
    check_can_edit(args.model)
    config = EditConfig.for_model(
        args.model,
        edit=EditSettings(
            strength=args.strength,
            bg_weight=args.bg_weight,
            bg_target=args.bg_target,
            mask_dilation=args.mask_dilation,
            composite=args.composite,
            feather=args.feather,
        ),
        inversion=InversionSettings.preset(args.inversion),
        **shared_settings(args, args.model, args.steps),
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
    metrics = interruptible(
        lambda: run_edit(out, config, job, subject, command=argv, paths=paths, progress=not args.quiet), out
    )
    if metrics is None:
        return EXIT_INTERRUPTED
    print(
        f"siso: stopped ({metrics['stop_reason']}), best edit at iteration {metrics['best_iteration']}; inversion "
        f"PSNR {metrics['inversion']['psnr']:.1f} dB; wrote {out.path / 'best.png'} and the run record"
    )
    print(f"siso: {cost(metrics)}")
    return 0
