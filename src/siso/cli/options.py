"""The options of a run's settings, derived from their declarations next to the config fields
(`siso.config.fields`): `add_setting_options` adds them to ``generate``, ``edit`` and ``eval run``, `shared_settings`
reads them back as the config's overrides; and the checks every command's options get before anything loads."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Collection, Iterator
from pathlib import Path

from siso.backbones import family
from siso.backbones.quantize import check_quantize
from siso.cli.library import add_save_options, check_save_options
from siso.config import InversionSettings, IPAdapterSettings, SisoConfig, check_seed
from siso.config.fields import Declared, declared
from siso.devices import check_device
from siso.runs.folder import check_output_folder


def declared_settings(
    without: Collection[str] = (), config: type[SisoConfig] = SisoConfig
) -> Iterator[tuple[str | None, Declared]]:
    """The declared settings of a run (``config`` and its settings groups), in field order, as (group, field): group
    ``None`` for a top-level field such as ``resolution``. A group's defaults are those of ``config``'s kind of run
    (``config._family_defaults({})``: a refine run redoes fewer steps than an edit).

    Args:
        without: Settings to leave out: a top-level field (``device``), a group (``fast``) or a group's field
            (``optim.num_inference_steps``).
        config: The run's config class (`siso.config.SisoConfig`, `siso.config.EditConfig`, ...).
    """
    top = {field.name: field for field in declared(config)}
    kind_defaults = config._family_defaults({})
    for name, kind in typing.get_type_hints(config).items():  # in field order
        if name in without:
            continue
        if name in top:
            yield None, top[name]
        elif dataclasses.is_dataclass(kind):
            for field in declared(kind, kind_defaults.get(name)):
                if f"{name}.{field.name}" not in without:
                    yield name, field


def dest(field: Declared) -> str:
    """The attribute of the parsed arguments that holds ``field``'s flag (argparse's: ``--max-iters`` -> max_iters)."""
    return field.declaration.flag.removeprefix("--").replace("-", "_")


def add_setting_options(
    parser: argparse.ArgumentParser, without: Collection[str] = (), config: type[SisoConfig] = SisoConfig
) -> None:
    """Add the flag of every declared setting of ``config`` (`declared_settings`, but those in ``without``) to
    ``parser``, under its section of ``--help``."""
    sections = {}  # section title -> its argument group
    for _, field in declared_settings(without, config):
        declaration = field.declaration
        section = declaration.section
        if section is not None and section not in sections:
            sections[section] = parser.add_argument_group(section)
        target = parser if section is None else sections[section]
        if field.kind is bool:
            target.add_argument(declaration.flag, action="store_true", help=field.help)
            continue
        target.add_argument(
            declaration.flag,
            action="append" if field.kind is tuple else "store",
            type=field.kind if field.kind in (int, float) else None,
            choices=declaration.choices,
            default=field.default if declaration.filled else None,
            metavar=declaration.metavar,
            help=field.help,
        )


def add_shared_options(
    parser: argparse.ArgumentParser, without: Collection[str] = (), config: type[SisoConfig] = SisoConfig
) -> None:
    """The options of ``generate``, ``edit`` and ``refine``: output, the library (`add_save_options`), the settings
    of a ``config`` run (`add_setting_options`, but those in ``without``), progress."""
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must be new or empty)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing siso output folder, and a saved subject of the --save-as name",
    )
    add_save_options(parser)
    add_setting_options(parser, without, config)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def ip_adapter_settings(args: argparse.Namespace) -> IPAdapterSettings | None:
    """The --ip-adapter flags as settings; ``None``: no adapter asked for.

    Raises:
        ValueError: a malformed --ip-adapter or scale, or --ip-adapter-scale without --ip-adapter.
    """
    if args.ip_adapter is None:
        if args.ip_adapter_scale is not None:
            raise ValueError("--ip-adapter-scale needs --ip-adapter")
        return None
    scale = IPAdapterSettings.scale if args.ip_adapter_scale is None else args.ip_adapter_scale
    return IPAdapterSettings.parse(args.ip_adapter, scale)


# Settings groups whose flags are read together by a function of their own rather than field by field: --ip-adapter
# ID|DIR[:WEIGHT_FILE] gives two fields, and its scale needs it; --inversion names a preset of every ReNoise field.
GROUP_READERS = {
    "ip_adapter": ip_adapter_settings,
    "inversion": lambda args: InversionSettings.preset(args.inversion),
}


def shared_settings(
    args: argparse.Namespace,
    model: str | None,
    num_inference_steps: int | None = None,
    config: type[SisoConfig] = SisoConfig,
) -> dict:
    """The settings of the flags ``args`` has (`declared_settings`), as overrides for `siso.backbones.config_for`
    (a flag left out is ``None``: the family's default, or the settings' own, stays).

    Args:
        args: The parsed arguments of a command with `add_setting_options`.
        model: The backbone, to check its flags against (``None``: not known yet).
        num_inference_steps: The steps of a command that names them its own way (``edit --steps``), over
            ``--train-steps``; ``None``: not given.
        config: The run's config class, whose settings the command has flags for.

    Raises:
        ValueError: --text-encoder-lora for a family without text-encoder LoRA, --tiny-vae without --fast; a
            malformed --ip-adapter.
    """
    if getattr(args, "tiny_vae", None) and not args.fast:
        raise ValueError("--tiny-vae needs --fast")
    cls = family(model) if model else None
    if getattr(args, "text_encoder_lora", False) and cls is not None and not cls.text_encoder_names:
        raise ValueError(f"{model} has no text-encoder LoRA (its text encoder stays frozen); drop --text-encoder-lora")
    overrides: dict = {}
    for group, field in declared_settings(config=config):
        if not hasattr(args, dest(field)):
            continue
        if group in GROUP_READERS:
            if group not in overrides:  # its first flag: the reader takes them all
                overrides[group] = GROUP_READERS[group](args)
            continue
        value = getattr(args, dest(field))
        if field.declaration.to_field is not None:
            value = field.declaration.to_field(value)
        if group is None:
            overrides[field.name] = value
        else:
            overrides.setdefault(group, {})[field.name] = value
    if num_inference_steps is not None:
        overrides.setdefault("optim", {})["num_inference_steps"] = num_inference_steps
    return overrides


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
    """Reject an unusable --device, --out or --save-as and bad numbers of any command before anything loads (each
    command's own flags are checked by its module).

    The configs' own validation checks the ranges of what a run uses; this also covers options without a config
    field (--num-images, --limit) and those the chosen mode ignores (--lora ignores the optimization's).

    Raises:
        ValueError: naming the option.
    """
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "out", None) is not None:
        check_output_folder(args.out)
    if hasattr(args, "save_as"):
        check_save_options(args)
    if getattr(args, "quantize", None) is not None:
        check_quantize(args.quantize, args.device)
    ir_model = getattr(args, "ir_model", None)
    if ir_model is not None:
        from siso.losses.guie import is_guie_checkpoint  # (imports transformers: only for a command that has it)

        if is_guie_checkpoint(ir_model) and not Path(ir_model).expanduser().is_file():
            raise ValueError(f"--ir-model: the GUIE checkpoint file {ir_model} does not exist")
    for name, value in vars(args).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number, got {value}")
        if name in COUNT_OPTIONS and value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")
        check_seed(args.seed + max(getattr(args, "num_images", 1), 1) - 1, "--seed + --num-images - 1")
