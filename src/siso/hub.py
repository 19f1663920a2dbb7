"""Loading pretrained models by Hub id or local directory, with errors that say how to fix them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import transformers
from safetensors import SafetensorError, safe_open

T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


def damaged_files(directory: str | Path) -> list[Path]:
    """The JSON and safetensors files in ``directory`` and its subfolders (a diffusers layout) that do not read.

    A JSON file that does not parse, or a safetensors file whose header does not read or does not cover the file
    (a truncated download), is damaged. Only headers are read, so this is quick even for a large model.
    """
    directory = Path(directory)
    damaged = []
    for file in sorted([*directory.glob("*"), *directory.glob("*/*")]):
        try:
            if file.suffix == ".json":
                json.loads(file.read_bytes())
            elif file.suffix == ".safetensors":
                with safe_open(file, "pt"):
                    pass
        except (ValueError, OSError, SafetensorError):
            damaged.append(file)
    return damaged


def load_pretrained(loader: Callable[..., T], name: str, what: str, one_tower: bool = False, **kwargs) -> T:
    """Call ``loader(name, **kwargs)`` (a ``from_pretrained``) and turn loading failures into `ModelLoadError`.

    Args:
        loader: e.g. ``Dinov2Model.from_pretrained``.
        name: Hub id or local directory.
        what: What the model is for, used in the message (e.g. "DINO similarity model").
        one_tower: Loading one tower of a two-tower checkpoint (CLIP's vision or text model): transformers' report
            of the other tower's weights as unexpected is expected, so it is not printed.
    """
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{what} {name!r} is a file; pass a model directory or a Hub id")
    if not path.exists() and name.startswith(("/", ".", "~")):  # a path, not a Hub id
        raise ModelLoadError(f"{what} directory {name} does not exist")
    verbosity = transformers.logging.get_verbosity()
    if one_tower:
        transformers.logging.set_verbosity_error()
    try:
        return loader(str(path) if path.is_dir() else name, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        damaged = damaged_files(path) if path.is_dir() else []
        if damaged:
            raise ModelLoadError(
                f"cannot load {what} {name!r}: {damaged[0]} is damaged (truncated or overwritten). Fix: download or "
                "save the model again"
            ) from None
        if isinstance(err, SafetensorError) and not path.is_dir():
            raise ModelLoadError(
                f"cannot load {what} {name!r}: a weights file of it in the Hugging Face cache is damaged ({err}). "
                f"Fix: `hf download {name} --force-download`"
            ) from None
        if isinstance(err, RuntimeError):  # transformers' size-mismatch report: a checkpoint of another architecture
            raise ModelLoadError(f"cannot load {what} {name!r}: {str(err).splitlines()[0]}") from None
        if not isinstance(err, OSError):
            raise
        if path.is_dir():
            raise ModelLoadError(f"cannot load {what} from directory {name}: {err}") from None
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        raise ModelLoadError(
            f"cannot load {what} {name!r}: it is not in the local Hugging Face cache and could not be downloaded "
            f"({reason}). Fix: run once with internet access (and HF_HUB_OFFLINE unset; log in for gated models), "
            f"or `hf download {name}`, or pass a local directory."
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)


def require_model_type(name: str, what: str, expected: str, label: str) -> None:
    """Refuse a checkpoint of another architecture: transformers would load it with random weights and a warning.

    Args:
        name: Hub id or local directory.
        what: What the model is for, used in the message.
        expected: The config's ``model_type`` (e.g. ``dinov2``).
        label: The architecture's name for the message (e.g. "DINOv2").

    Raises:
        ModelLoadError: the config cannot be read or names another ``model_type``.
    """
    kind = load_pretrained(transformers.PretrainedConfig.get_config_dict, name, what)[0].get("model_type")
    if kind is not None and kind != expected:  # no config at all: the model loader's own error says what is missing
        raise ModelLoadError(f"{what} {name!r} is a {kind} model, not {label}; pass a {label} checkpoint")
