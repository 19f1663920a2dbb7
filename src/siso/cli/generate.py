"""``siso generate``: learn a subject from one photo and generate with it, or generate from a saved subject."""

from __future__ import annotations

import argparse
from pathlib import Path

from siso.backbones import BACKBONES, check_ip_adapter, config_for
from siso.cli.errors import EXIT_INTERRUPTED, interruptible
from siso.cli.library import save_subject
from siso.cli.options import add_shared_options, shared_settings
from siso.cli.subjects import add_subject_option, load_subject_spec, subject_specs
from siso.compose import Box
from siso.compose.regional import EDGE
from siso.compose.saved import SavedSubject, is_composed, read_saved
from siso.config import MAX_SUBJECTS, SisoConfig
from siso.library import Library, check_family
from siso.lora import read_subject_info
from siso.losses.tiny_vae import tiny_vae_name
from siso.runs.folder import RunFolder
from siso.runs.jobs import GenerationJob
from siso.runs.run import run as run_spec
from siso.runs.spec import RunSpec
from siso.vision.grounding import DEFAULT_DETECTOR


def add_parser(sub) -> None:
    """Add the ``generate`` command to the top-level subparsers."""
    gen = sub.add_parser(
        "generate",
        help="learn a subject from one photo and generate it, or generate from a saved subject (--lora)",
        description="Learn a subject from one photo (--subject) and generate every --prompt with it, or reuse a "
        "saved subject (--lora) without optimizing, or compose several saved subjects, each in its --box.",
    )
    add_subject_option(
        gen,
        "--subject",
        metavar="PHOTO|DIR",
        help=f"the subject photo, or a folder of photos of the one subject (the loss averages over them; "
        f"non-square photos are centre-cropped); repeat for several subjects in one image (at most {MAX_SUBJECTS}), "
        "each followed by its own --subject-class and --box",
    )
    add_subject_option(
        gen,
        "--subject-class",
        metavar="NAME",
        help="the class of the --subject (or --lora) before it (e.g. dog): what siso looks for to place subjects "
        "given no --box (default: recorded with a saved subject, else detected in the photo)",
    )
    add_subject_option(
        gen,
        "--box",
        metavar="x0,y0,x1,y1",
        help="where the --subject (or --lora) before it goes: pixels of the generated image, or fractions of its "
        "sides when all four are at most 1 (0.5,0,1,1: the right half); several subjects without boxes are placed "
        "where the frozen model draws them",
    )
    add_subject_option(
        gen,
        "--lora",
        metavar="NAME|DIR",
        help="a saved subject: a name in the library (--save-as NAME kept it) or the lora/ folder of an earlier run; "
        "repeat, each followed by its own --box, to compose saved subjects in one image with no new learning "
        "(several without boxes are placed where the bare model draws their classes)",
    )
    gen.set_defaults(lora=None)
    gen.add_argument(
        "--polish",
        type=int,
        metavar="N",
        help="after composing saved subjects (--lora ... --box ...), up to N iterations of the composed loss that "
        "correct every subject's LoRA in its own region (needs the subjects' photos: library subjects keep them)",
    )
    gen.add_argument(
        "--blend-edge",
        type=float,
        default=EDGE,
        metavar="PX",
        help=f"composing saved subjects: the width in pixels of the soft edge of each region ({EDGE:g}; 0: hard)",
    )
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
    gen.add_argument(
        "--num-images", type=int, default=1, metavar="K", help="images per prompt, seeds SEED..SEED+K-1 (1)"
    )
    gen.add_argument(
        "--steps", type=int, metavar="N", help="denoising steps of the final images (default: --train-steps)"
    )
    gen.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        metavar="ID|DIR",
        help=f"Grounding DINO, to place several subjects given no --box ({DEFAULT_DETECTOR})",
    )
    add_shared_options(gen)


def check(args: argparse.Namespace) -> None:
    """Refuse flags that do not go together, before anything loads.

    Raises:
        ValueError: naming the flags.
    """
    if args.lora and (args.fast or args.tiny_vae or args.negative):
        raise ValueError(
            "--fast, --tiny-vae and --negative are for learning a subject (--subject); with --lora nothing is "
            "optimized (a --polish takes none of them)"
        )
    specs = subject_specs(args)
    if bool([s for s in specs if "photo" in s]) == bool(args.lora):
        raise ValueError("give the subject: --subject PHOTO (to learn it) or --lora NAME|DIR (a saved one), not both")
    if args.lora and (args.ip_adapter or args.ip_adapter_scale is not None):
        raise ValueError("--ip-adapter and --ip-adapter-scale are for learning a subject; a saved one brings its own")
    if args.polish is not None:
        if not args.lora:
            raise ValueError("--polish is for composing saved subjects (--lora); learning (--subject) optimizes anyway")
        if args.polish < 0:
            raise ValueError(f"--polish must be >= 0, got {args.polish}")
    if args.blend_edge < 0:
        raise ValueError(f"--blend-edge must be >= 0 pixels, got {args.blend_edge:g}")
    if args.lora and len({"box" in spec for spec in specs}) > 1:
        raise ValueError("give every --lora a --box, or none (then each goes where the bare model draws its class)")
    side = args.resolution or (BACKBONES[args.model][2] if args.model in BACKBONES else None)
    for spec in specs:
        if "box" in spec:
            box = Box.parse(spec["box"])
            if side is not None:
                box.pixels(side, side)
        if "class" in spec and not spec["class"].strip():
            raise ValueError("a subject class must not be empty")
    if args.lora:  # nothing is optimized, but the flags' values are checked too, before the saved subject is read
        config_for(SisoConfig, "sdxl-turbo", **shared_settings(args, None))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``siso generate``: translate the flags into a run (`siso.runs.spec.RunSpec`) and run it; returns the exit
    code."""
    saved = saved_subjects(args) if args.lora else []
    lora = saved[0].folder if len(saved) == 1 and saved[0].box is None and args.polish is None else None
    if saved:
        model = args.model or read_subject_info(args.lora_folders[0]).get("model")
        if model is None:
            raise ValueError(f"{args.lora_folders[0]} does not say which model it was learned on; pass --model")
        for folder in args.lora_folders:
            check_family(folder, model)
    else:
        model = args.model or "sdxl-turbo"
    # The run's settings, merged once: the family's defaults, then the flags given.
    config = config_for(
        SisoConfig,
        model,
        train_prompt=args.train_prompt or args.prompt[0],
        **shared_settings(args, model),
    )
    if args.ip_adapter:
        if len(subject_specs(args)) > 1:
            raise ValueError("--ip-adapter takes one subject (its photos are the adapter's image)")
        check_ip_adapter(model)  # a family without one is refused before anything loads
    optim = config.optim
    job = GenerationJob(
        prompts=args.prompt,
        seeds=[args.seed + k for k in range(args.num_images)],
        num_inference_steps=optim.num_inference_steps if args.steps is None else args.steps,
        guidance_scale=optim.guidance_scale,
    )
    if lora:
        out = RunFolder(args.out, args.overwrite)
        spec = RunSpec("reuse", config, out, job=job, lora=lora, command=argv)
    elif saved:
        out = RunFolder(args.out, args.overwrite)
        spec = RunSpec(
            "compose",
            config,
            out,
            job=job,
            saved=saved,
            polish=args.polish or 0,
            edge=args.blend_edge,
            command=argv,
            detector=args.detector,
        )
    else:
        if config.fast.enabled:
            tiny_vae_name(config.fast, model)  # a family without a tiny VAE is refused before anything loads
        subjects = [
            load_subject_spec(given, box=Box.parse(given["box"]) if "box" in given else None)
            for given in subject_specs(args)
        ]
        out = RunFolder(args.out, args.overwrite)
        spec = RunSpec("learn", config, out, subjects, job, command=argv, detector=args.detector)
    notify = None if lora else lambda line: print(f"siso: {line}")

    def work():
        return run_spec(spec, progress=not args.quiet, notify=notify)

    metrics = interruptible(work, out)
    if metrics is None:
        return EXIT_INTERRUPTED
    if "stop_reason" in metrics:
        print(f"siso: stopped ({metrics['stop_reason']}), best image at iteration {metrics['best_iteration']}")
        print(f"siso: {cost(metrics)}")
    print(f"siso: wrote {len(metrics['images'])} image(s) and the run record to {out.path}")
    save_subject(args, lora or out.path / "lora")
    return 0


def saved_subjects(args: argparse.Namespace) -> list[SavedSubject]:
    """The saved subjects of ``--lora`` (library names or folders; a composed folder gives each of its subjects, with
    their boxes), each with its ``--box`` and ``--subject-class``; their folders go to ``args.lora_folders``. Read and
    checked without loading any model.

    Raises:
        LibraryError: a name that is neither a folder nor in the library.
        FileNotFoundError, LoraError: a subject folder without weights, or damaged.
        ValueError: a composed folder with other --lora's or a --box.
    """
    library = Library(args.library)
    specs = subject_specs(args)
    args.lora_folders = [library.resolve(spec["lora"]) for spec in specs]
    saved = []
    for spec, folder in zip(specs, args.lora_folders, strict=True):
        if is_composed(folder) and len(specs) > 1:
            raise ValueError(f"{spec['lora']} is a composition of saved subjects: draw it alone (one --lora)")
        name = (
            spec["lora"]
            if not Path(spec["lora"]).is_dir()
            else (folder.parent if folder.name == "lora" else folder).name
        )
        for subject in read_saved(folder, name, Box.parse(spec["box"]) if "box" in spec else None):
            if "class" in spec:
                subject.info = {**subject.info, "class": spec["class"]}
            saved.append(subject)
    return saved


def cost(metrics: dict) -> str:
    """What the optimization cost: iterations, median seconds per iteration, peak memory."""
    text = f"{len(metrics['iterations'])} iterations, {metrics['seconds_per_iteration']:.2f} s/iteration (median)"
    if metrics.get("peak_memory_gb") is not None:
        text += f", peak memory {metrics['peak_memory_gb']:.2f} GB ({metrics['peak_memory_kind']})"
    return text
