"""``siso edit``: put the subject of one photo into another photo, in place of an object (subject swap)."""

from __future__ import annotations

import argparse

from siso.backbones import check_can_edit, config_for
from siso.cli.errors import EXIT_INTERRUPTED, interruptible
from siso.cli.generate import cost
from siso.cli.library import save_subject
from siso.cli.options import add_shared_options, shared_settings
from siso.cli.subjects import add_subject_option, checked_specs, given_region, load_subject_spec, subject_specs
from siso.config import MAX_SUBJECTS, EditConfig
from siso.images import load_subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import EditJob
from siso.runs.run import run as run_spec
from siso.runs.spec import RunSpec
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
    add_subject_option(
        edit,
        "--subject",
        metavar="PHOTO|DIR",
        help="the subject photo, or a folder of photos of the one subject; repeat to put several subjects into the "
        f"photo (at most {MAX_SUBJECTS}), each "
        "followed by its own --box or --mask (its region) and --subject-class",
    )
    add_subject_option(
        edit,
        "--mask",
        metavar="PNG",
        help="region of the --subject before it: object mask, white = object (any size of the photo's aspect)",
    )
    add_subject_option(
        edit, "--box", metavar="x0,y0,x1,y1", help="region of the --subject before it: a box in pixels of the photo"
    )
    edit.add_argument(
        "--object",
        metavar="NAME",
        help="one subject: the object to detect and replace when no --box or --mask is given (default: the subject "
        "class)",
    )
    add_subject_option(
        edit,
        "--subject-class",
        metavar="NAME",
        help="the class of the --subject before it, e.g. dog (default: detected in the subject photo)",
    )
    edit.add_argument("--prompt", metavar="TEXT", help="edit prompt (default: 'a photo of a <subject class>')")
    edit.add_argument(
        "--model",
        default="sdxl-turbo",
        metavar="NAME|DIR",
        help="sdxl-turbo (default), sd-turbo, flux-schnell, sana, a Hub id or a folder",
    )
    edit.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="schedule length that --strength cuts (the family's: 4 for SD and FLUX, t=749,499,249; 20 for Sana)",
    )
    edit.add_argument(
        "--detector", default=DEFAULT_DETECTOR, metavar="ID|DIR", help=f"Grounding DINO ({DEFAULT_DETECTOR})"
    )
    edit.add_argument("--segmenter", default=DEFAULT_SEGMENTER, metavar="ID|DIR", help=f"SAM ({DEFAULT_SEGMENTER})")
    # --steps is editing's schedule; the fast loss and an IP-Adapter start are generation's.
    add_shared_options(edit, without=("optim.num_inference_steps", "fast", "ip_adapter"), config=EditConfig)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``siso edit``; returns the exit code."""
    check_can_edit(args.model)
    config = config_for(EditConfig, args.model, **shared_settings(args, args.model, args.steps, EditConfig))
    scene = load_subject(args.image, what="photo to edit")
    specs = subject_specs(args)
    regions = [(mask, source or "detected") for mask, source in (given_region(spec, scene.size) for spec in specs)]
    if len(specs) == 1:
        given, (mask, source) = specs[0], regions[0]
        job = EditJob(scene, mask, source, args.object, given.get("class"), args.prompt, args.detector, args.segmenter)
        subjects = [load_subject_spec(given)]
    else:
        sources = "; ".join(source for _, source in regions)
        job = EditJob(scene, None, sources, None, None, args.prompt, args.detector, args.segmenter)
        subjects = [load_subject_spec(given, region=mask) for given, (mask, _) in zip(specs, regions, strict=True)]
    out = RunFolder(args.out, args.overwrite)
    paths = {"image": str(args.image), "subject": str(specs[0]["photo"]) if len(specs) == 1 else None}
    spec = RunSpec("edit", config, out, subjects, job, command=argv, paths=paths, detector=args.detector)
    metrics = interruptible(lambda: run_spec(spec, progress=not args.quiet), out)
    if metrics is None:
        return EXIT_INTERRUPTED
    print(
        f"siso: stopped ({metrics['stop_reason']}), best edit at iteration {metrics['best_iteration']}; inversion "
        f"PSNR {metrics['inversion']['psnr']:.1f} dB; wrote {out.path / 'best.png'} and the run record"
    )
    print(f"siso: {cost(metrics)}")
    # An edit's or refine's siso_subject.json names no photos: they are the command's.
    save_subject(args, out.path / "lora", [photo for subject in subjects for photo in subject.record()["photos"]])
    return 0


def check(args: argparse.Namespace) -> None:
    """Refuse subject options that do not go together, before anything loads.

    Raises:
        ValueError: naming the options.
    """
    specs = checked_specs(args)
    if args.object is not None and (len(specs) > 1 or "box" in specs[0] or "mask" in specs[0]):
        raise ValueError("--object names what to detect for one subject without --box or --mask; drop it")
