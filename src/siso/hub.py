"""Loading pretrained models by Hub id or local directory, with errors that say how to fix them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import transformers

T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model and the fix."""


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
    verbosity = transformers.logging.get_verbosity()
    if one_tower:
        transformers.logging.set_verbosity_error()
    try:
        return loader(str(path) if path.is_dir() else name, **kwargs)
    except RuntimeError as err:  # transformers' size-mismatch report: a checkpoint of another architecture
        raise ModelLoadError(f"cannot load {what} {name!r}: {str(err).splitlines()[0]}") from None
    except OSError as err:
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
