"""LoRA adapters through peft, saved and loaded with diffusers' own LoRA I/O.

A saved subject is a folder with ``pytorch_lora_weights.safetensors`` (with peft adapter metadata) that a stock
``pipe.load_lora_weights(folder)`` loads, plus ``siso_subject.json`` naming the backbone it was learned on. A subject
learned over an IP-Adapter also records the adapter (``"ip_adapter"``: model, weight file, scale, image files) and
keeps its images as lossless PNGs (``ip_adapter_image.png``, ``ip_adapter_image_1.png``, ...): a stock pipeline
with ``load_ip_adapter``, ``set_ip_adapter_scale`` and ``ip_adapter_image=[[those images]]`` draws the same images.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import diffusers
import torch
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors import SafetensorError, safe_open

from siso.backbones import Backbone
from siso.config import IPAdapterSettings, LoraSettings
from siso.io import atomic_folder, write_json

ADAPTER = "default"
SUBJECT_FILE = "siso_subject.json"
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name, what a stock load_lora_weights(folder) reads

LoraSnapshot = dict[str, dict[str, torch.Tensor]]


class LoraError(ValueError):
    """A saved subject that cannot be used; the message names the file and the fix."""


def add_lora(backbone: Backbone, settings: LoraSettings, adapter: str = ADAPTER) -> dict[str, torch.nn.Module]:
    """Add zero-initialised LoRA adapters named ``adapter`` (B = 0, so the model is unchanged) and make only them
    trainable. Adapters the modules already carry under other names stay as they are (frozen); diffusers'
    ``add_adapter`` leaves only the new one active, so a caller that wants others active sets them again.

    Returns:
        Pipeline component name -> module that carries the adapter (the denoiser, then any text encoders).

    Raises:
        ValueError: a module already carries an adapter named ``adapter``, or text-encoder LoRA is asked of a
            backbone without it.
    """
    if settings.train_text_encoder and not backbone.text_encoder_names:
        raise ValueError(
            f"{type(backbone).__name__} has no text-encoder LoRA (its text encoder stays frozen); leave "
            "train_text_encoder (--text-encoder-lora) off"
        )
    modules = {backbone.denoiser_name: backbone.denoiser}
    if settings.train_text_encoder:
        modules.update(backbone.text_encoders)
    for name, module in modules.items():
        if adapter in getattr(module, "peft_config", {}):
            raise ValueError(f"{name} already has a LoRA adapter; load a fresh backbone for a new subject")
        targets = backbone.lora_targets if module is backbone.denoiser else backbone.text_encoder_lora_targets
        module.add_adapter(
            LoraConfig(
                r=settings.rank, lora_alpha=settings.lora_alpha, init_lora_weights=True, target_modules=list(targets)
            ),
            adapter_name=adapter,
        )
    # Adam state and updates in fp32 even when the frozen weights are bf16/fp16.
    cast_training_params(list(modules.values()), dtype=torch.float32)
    return modules


def trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def adapter_parameters(module: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of ``module`` that belong to the adapter named ``adapter`` (peft names them
    ``...lora_A.<adapter>.weight``), trainable or not."""
    part = f".{adapter}."
    return {name: p for name, p in module.named_parameters() if "lora_" in name and part in name}


def snapshot(modules: dict[str, torch.nn.Module]) -> LoraSnapshot:
    """A detached copy of the LoRA weights (not a view: later optimizer steps do not change it)."""
    return {name: {k: p.detach().clone() for k, p in trainable(m).items()} for name, m in modules.items()}


@torch.no_grad()
def restore(modules: dict[str, torch.nn.Module], snap: LoraSnapshot) -> None:
    """Write a `snapshot` back into the adapters."""
    for name, module in modules.items():
        for key, param in trainable(module).items():
            param.copy_(snap[name][key])


def lora_modules(backbone: Backbone, adapter: str = ADAPTER) -> dict[str, torch.nn.Module]:
    """Pipeline component name -> module, for each of the backbone's modules that carries the adapter ``adapter``."""
    names = (backbone.denoiser_name, *backbone.text_encoder_names)
    modules = {name: getattr(backbone.pipe, name) for name in names}
    return {name: m for name, m in modules.items() if m is not None and adapter in getattr(m, "peft_config", {})}


def save_lora(backbone: Backbone, directory: str | Path, adapter: str = ADAPTER, **subject_info) -> Path:
    """Save the backbone's adapters with ``<Pipeline>.save_lora_weights`` so a stock pipeline loads them; the folder
    appears whole or not at all (`siso.io.atomic_folder`), replacing an earlier one.

    Args:
        backbone: A backbone that carries adapters (`add_lora`, `load_lora`).
        directory: Output folder.
        adapter: The adapter to save (the saved file names no adapter: a stock load gives it the loader's name).
        subject_info: Extra JSON-serialisable facts written to ``siso_subject.json`` (model, prompt, ...).

    Raises:
        ValueError: the backbone carries no adapter.
    """
    modules = lora_modules(backbone, adapter)
    if not modules:
        raise ValueError("the backbone carries no LoRA adapter to save")
    kwargs = {}
    for name, module in modules.items():
        state = get_peft_model_state_dict(module, adapter_name=adapter)
        kwargs[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(state)
        kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config[adapter].to_dict()
    if backbone.ip_adapter is not None:
        names = [f"ip_adapter_image{f'_{k}' if k else ''}.png" for k in range(len(backbone.ip_adapter_images))]
        subject_info = {**subject_info, "ip_adapter": {**dataclasses.asdict(backbone.ip_adapter), "images": names}}
    with atomic_folder(directory) as partial:
        type(backbone.pipe).save_lora_weights(partial, **kwargs)
        if backbone.ip_adapter is not None:
            for name, image in zip(names, backbone.ip_adapter_images, strict=True):
                image.save(partial / name)  # PNG: lossless, so the adapter sees the same pixels when reused
        write_json(partial / SUBJECT_FILE, {"resolution": backbone.resolution, **subject_info})
    return Path(directory)


def saved_ip_adapter(directory: str | Path) -> tuple[IPAdapterSettings, list[Image.Image]] | None:
    """The IP-Adapter a saved subject was learned over and its images (``None``: none), read without loading any
    model; give them to `siso.backbones.Backbone.load_ip_adapter` before `load_lora`.

    Raises:
        LoraError: the record or an image is missing or damaged.
    """
    record = read_subject_info(directory).get("ip_adapter")
    if record is None:
        return None
    path = Path(directory) / SUBJECT_FILE
    fix = f"restore it, or delete {directory} and learn the subject again"
    try:
        settings = IPAdapterSettings(record["model"], record["weight_name"], record["scale"])
        names = list(record["images"])
    except (KeyError, TypeError, ValueError) as err:
        raise LoraError(f"{path}: its IP-Adapter record is damaged ({err}); {fix}") from None
    if not names:
        raise LoraError(f"{path}: its IP-Adapter record names no image; {fix}")
    images = []
    for name in names:
        try:
            with Image.open(Path(directory) / name) as image:
                images.append(image.convert("RGB"))
        except OSError as err:
            raise LoraError(f"{Path(directory) / name}, the IP-Adapter's image, does not read ({err}); {fix}") from None
    return settings, images


def read_subject_info(directory: str | Path) -> dict:
    """The ``siso_subject.json`` of a saved subject ({} for a LoRA folder siso did not write).

    Raises:
        LoraError: the file is not a JSON object.
    """
    path = Path(directory) / SUBJECT_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_bytes())
    except ValueError as err:
        raise LoraError(f"{path} is damaged ({err}); restore it, or delete it and pass --model") from None
    if not isinstance(info, dict):
        raise LoraError(f"{path} is not a JSON object; restore it, or delete it and pass --model")
    return info


def check_lora_file(directory: str | Path) -> list[str]:
    """Read the header of a saved subject's weights file, without loading any model; returns its tensor names.

    Raises:
        FileNotFoundError: ``directory`` has no weights file.
        LoraError: the file is damaged (truncated, overwritten) or holds no tensors.
    """
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE}; pass the 'lora' folder of a run")
    fix = f"restore it, or delete {directory} and learn the subject again"
    try:
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as err:
        raise LoraError(f"{path} is damaged ({err}); {fix}") from None
    if not keys:
        raise LoraError(f"{path} holds no LoRA weights; {fix}")
    return keys


def load_lora(backbone: Backbone, directory: str | Path, adapter: str = ADAPTER) -> None:
    """Load a saved subject with the stock ``pipe.load_lora_weights`` as the adapter named ``adapter``, and check that
    every tensor found its layer.

    diffusers only warns about LoRA weights that match no layer of the model (another backbone's, renamed keys) and
    then generates without them; here that is an error.

    Raises:
        FileNotFoundError, LoraError: as `check_lora_file`; or the weights do not fit this backbone (then no
            adapter is left loaded).
    """
    keys = check_lora_file(directory)
    backbone.ensure_text_encoders()  # a text-encoder LoRA needs its encoder in place (not parked, not freed)
    expected = sum(not k.endswith(".alpha") for k in keys)  # kohya-style files store alphas as extra entries
    path = Path(directory) / WEIGHTS_FILE
    fix = "it was learned on another model: use that one (--model), or learn the subject again on this one"
    # Our error replaces diffusers' and peft's messages about the same failure.
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # peft's note that a model carries several adapters: a caller loading a second one means to.
            warnings.filterwarnings("ignore", "Already found a `peft_config` attribute")
            backbone.pipe.load_lora_weights(directory, adapter_name=adapter)
    except (RuntimeError, ValueError) as err:
        _take_off(backbone, adapter)
        reason = (str(err).splitlines() or [type(err).__name__])[-1].strip().rstrip(".")
        reason = reason if len(reason) <= 200 else reason[:200] + " ..."  # peft may list every module
        raise LoraError(f"{path} does not fit this model ({reason}); {fix}") from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    modules = [backbone.denoiser, *backbone.text_encoders.values()]
    loaded = sum(
        len(get_peft_model_state_dict(m, adapter_name=adapter))
        for m in modules
        if adapter in getattr(m, "peft_config", {})
    )
    if loaded != expected:
        _take_off(backbone, adapter)
        raise LoraError(f"{path}: only {loaded} of its {expected} LoRA tensors match layers of this model; {fix}")


def _take_off(backbone: Backbone, adapter: str) -> None:
    """Remove the adapter ``adapter`` (loaded in part or whole), leaving any other adapter as it was."""
    modules = [backbone.denoiser, *backbone.text_encoders.values()]
    if any(set(getattr(m, "peft_config", {})) - {adapter} for m in modules if m is not None):
        backbone.pipe.delete_adapters(adapter)
    else:
        backbone.pipe.unload_lora_weights()


def load_saved_subject(backbone: Backbone, directory: str | Path) -> dict:
    """Load a saved subject onto ``backbone``: the IP-Adapter it was learned over (with its images), if any, then its
    LoRA (`load_lora`). The one way a saved subject is loaded: ``siso generate --lora``, the app's subject zip and
    ``eval run``'s saved units.

    Returns:
        The subject's ``siso_subject.json`` (`read_subject_info`).

    Raises:
        FileNotFoundError, LoraError: as `check_lora_file` and `saved_ip_adapter` (before anything loads), or the
            weights do not fit this backbone.
        ValueError: the backbone already carries an IP-Adapter or LoRA, or its family takes no IP-Adapter.
    """
    check_lora_file(directory)
    adapter = saved_ip_adapter(directory)  # the adapter goes in first: its loader replaces the attention processors
    if adapter is not None:
        backbone.load_ip_adapter(*adapter)
    load_lora(backbone, directory)
    return read_subject_info(directory)


def unload_saved_subject(backbone: Backbone) -> None:
    """Take the subject off ``backbone``: its LoRA and its IP-Adapter, whichever it carries (the base model after)."""
    if getattr(backbone.denoiser, "peft_config", None):
        backbone.pipe.unload_lora_weights()
    if backbone.ip_adapter is not None:
        backbone.unload_ip_adapter()
