"""``siso refine``: give an image that already shows your subject (another model's output, or a photo) the subject's
exact identity, keeping its pose, composition and background."""

from __future__ import annotations

import argparse

from siso.backbones import check_can_edit, check_ip_adapter, config_for
from siso.cli.errors import EXIT_INTERRUPTED, interruptible
from siso.cli.generate import cost
from siso.cli.library import save_subject
from siso.cli.options import add_shared_options, shared_settings
from siso.cli.subjects import add_subject_option, checked_specs, given_region, load_subject_spec, subject_specs
from siso.config import MAX_SUBJECTS, IPAdapterSettings, RefineConfig
from siso.images import load_subject
from siso.runs.folder import RunFolder
from siso.runs.jobs import RefineJob
from siso.runs.run import run as run_spec
from siso.runs.spec import RunSpec
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER

# The adapter of ``--start ip-adapter`` when --ip-adapter names none (its SDXL weight file is the family's default).
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"


def add_parser(sub) -> None:
    """Add the ``refine`` command to the top-level subparsers."""
    refine = sub.add_parser(
        "refine",
        help="give an image that shows your subject (another model's output) the subject's exact identity",
        description="Restore your subject's identity (--subject) in an image that already shows it (--image), keeping "
        "its pose, composition and background: the subject's region comes from --box, --mask, detection of "
        "--subject-class with Grounding DINO + SAM, or --region all.",
    )
    refine.add_argument("--image", metavar="IMAGE", help="the image to refine (or --start ip-adapter draws it)")
    add_subject_option(
        refine,
        "--subject",
        metavar="PHOTO|DIR",
        help="the subject photo, or a folder of photos of the one subject; repeat for several subjects in the image "
        f"(at most {MAX_SUBJECTS}), each followed by its own --box, --mask or --subject-class",
    )
    add_subject_option(
        refine, "--mask", metavar="PNG", help="region of the --subject before it: white = the subject (image's aspect)"
    )
    add_subject_option(
        refine, "--box", metavar="x0,y0,x1,y1", help="region of the --subject before it: a box in pixels of the image"
    )
    add_subject_option(
        refine,
        "--subject-class",
        metavar="NAME",
        help="the class of the --subject before it, e.g. dog: what is detected in the image when it has no --box or "
        "--mask (default: named from the subject photo)",
    )
    refine.add_argument(
        "--region", choices=("all",), help="all: refine the whole image (one subject; no background term)"
    )
    refine.add_argument("--prompt", metavar="TEXT", help="the image's prompt (default: 'a photo of a <subject class>')")
    refine.add_argument(
        "--model",
        default="sdxl-turbo",
        metavar="NAME|DIR",
        help="sdxl-turbo (default), sd-turbo, flux-schnell, sana, a Hub id or a folder",
    )
    refine.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="schedule length that --strength cuts (the family's: 4 for SD and FLUX, t=499,249; 20 for Sana)",
    )
    refine.add_argument(
        "--detector", default=DEFAULT_DETECTOR, metavar="ID|DIR", help=f"Grounding DINO ({DEFAULT_DETECTOR})"
    )
    refine.add_argument("--segmenter", default=DEFAULT_SEGMENTER, metavar="ID|DIR", help=f"SAM ({DEFAULT_SEGMENTER})")
    add_shared_options(refine, without=("optim.num_inference_steps", "fast"), config=RefineConfig)


def check(args: argparse.Namespace) -> None:
    """Refuse options that do not go together, before anything loads.

    Raises:
        ValueError: naming the options.
    """
    specs = checked_specs(args)
    drawn = args.start == "ip-adapter"
    if drawn == (args.image is not None):
        raise ValueError(
            "give the image to refine: --image IMAGE"
            if not drawn
            else "--start ip-adapter draws the image to refine; drop --image"
        )
    if drawn:
        check_ip_adapter(args.model)
    elif args.ip_adapter is not None:
        raise ValueError("--ip-adapter picks the adapter of --start ip-adapter; add that, or drop --ip-adapter")
    for spec in specs:
        if (args.region or drawn) and ("box" in spec or "mask" in spec):
            raise ValueError(
                "--region all is the whole image: drop --box and --mask"
                if args.region
                else "--start ip-adapter draws the image, so no --box or --mask can point into it: the subject is "
                "found by its class, or give --region all"
            )
    if args.region and len(specs) > 1:
        raise ValueError("--region all refines one subject; give each of several subjects its --box or --mask")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``siso refine``; returns the exit code."""
    check_can_edit(args.model)
    overrides = shared_settings(args, args.model, args.steps, RefineConfig)
    if args.start == "ip-adapter" and overrides.get("ip_adapter") is None:
        overrides["ip_adapter"] = IPAdapterSettings(DEFAULT_IP_ADAPTER)
    config = config_for(RefineConfig, args.model, **overrides)
    image = None if args.image is None else load_subject(args.image, what="image to refine")
    specs = subject_specs(args)
    regions = [given_region(spec, image.size) if image else (None, None) for spec in specs]
    subjects = [load_subject_spec(spec, region=region) for spec, (region, _) in zip(specs, regions, strict=True)]
    job = RefineJob(
        image,
        whole=args.region == "all",
        sources=[source for _, source in regions],
        prompt=args.prompt,
        detector=args.detector,
        segmenter=args.segmenter,
    )
    out = RunFolder(args.out, args.overwrite)
    paths = {"image": None if args.image is None else str(args.image)}
    spec = RunSpec("refine", config, out, subjects, job, command=argv, paths=paths, detector=args.detector)
    metrics = interruptible(lambda: run_spec(spec, progress=not args.quiet), out)
    if metrics is None:
        return EXIT_INTERRUPTED
    print(
        f"siso: stopped ({metrics['stop_reason']}), best at iteration {metrics['best_iteration']}; inversion PSNR "
        f"{metrics['inversion']['psnr']:.1f} dB; wrote {out.path / 'best.png'} and the run record"
    )
    for term, before in metrics["before"].items():
        after = metrics["after"][term]
        gains = ", ".join(f"{name} {before[name]:.3f} -> {after[name]:.3f}" for name in before)
        print(f"siso: {term}: similarity to the subject's photos {gains} (check: a network the loss did not use)")
    print(f"siso: {cost(metrics)}")
    # An edit's or refine's siso_subject.json names no photos: they are the command's.
    save_subject(args, out.path / "lora", [photo for subject in subjects for photo in subject.record()["photos"]])
    return 0
