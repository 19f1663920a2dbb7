"""Personalize the diffusers pipeline the caller already has: learn a subject onto it as a named LoRA adapter
(`personalize`), or load a saved subject onto it (`use_subject`).

The caller's pipeline keeps its dtype, devices and memory switches. While siso learns, the pipeline is borrowed and
given back as it was: model CPU offload (``enable_model_cpu_offload``) is suspended and enabled again exactly as
diffusers does after every call; the scheduler object, the components' ``requires_grad`` flags, the progress-bar
config, gradient checkpointing, the VAE's dtype and memory layout are put back; the caller's LoRA adapters stay
loaded, frozen, and those active draw beside the new one while it learns and after. Sequential and group offload and
device maps are refused (`siso.pipelines.one_device`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from siso.adapters import activate, active_adapters
from siso.backbones import BACKBONES, Backbone, family
from siso.compose import Subject
from siso.config import SisoConfig
from siso.hub import load_pretrained
from siso.images import load_photos
from siso.library import Library
from siso.lora import LoraError, check_lora_file, load_lora, read_subject_info, save_lora, saved_ip_adapter
from siso.losses.networks import LossNetworks
from siso.optimize import IterationCallback, SisoResult, optimize_generation
from siso.pipelines import check_lora, components, has_ip_adapter, kept, learning, one_device, pipeline_family, take_off
from siso.runs.models import Models
from siso.runs.objective import objective

ADAPTER_NAME = "subject"
Photos = str | Path | Image.Image | Sequence[str | Path | Image.Image]
# Settings the caller's pipeline decides: what to do instead.
PIPELINE_FIELDS = {
    "model": "it is the pipeline's",
    "dtype": "it is the pipeline's: load it in the dtype you want (from_pretrained(..., dtype=...))",
    "device": "it is the pipeline's: pipe.to(device) or pipe.enable_model_cpu_offload() first",
    "train_prompt": "pass prompt=",
}


@dataclass
class Personalized:
    """What `personalize` learned, loaded on the caller's pipeline as the adapter ``adapter_name``.

    Attributes:
        result: The optimization's result (`siso.optimize.SisoResult`: best image, iteration, loss, LoRA weights,
            per-iteration loss history, why it stopped).
        adapter_name: The adapter's name on the pipeline (``pipe.get_active_adapters()`` lists it).
        call_kwargs: What makes ``pipe(prompt, generator=torch.Generator().manual_seed(seed), **call_kwargs)`` draw the
            schedule learned on (size, steps, guidance, the family's extra arguments): with the train prompt and
            ``seed``, ``best_image``.
        seed: The seed of the noise learned from.
        info: What `save` writes to ``siso_subject.json`` besides the resolution (model, train prompt, photos).
    """

    result: SisoResult
    adapter_name: str
    call_kwargs: dict
    seed: int
    info: dict
    _backbone: Backbone = field(repr=False)

    @property
    def best_image(self) -> Image.Image:
        return self.result.best_image

    @property
    def history(self) -> list[dict]:
        return self.result.history

    def save(self, directory: str | Path) -> Path:
        """Write the subject folder (`siso.lora.save_lora`: a stock ``pipe.load_lora_weights(directory)`` reads it,
        `use_subject` loads it) from the adapter's weights on the pipeline.

        Raises:
            ValueError: the pipeline no longer carries the adapter.
        """
        return save_lora(self._backbone, directory, adapter=self.adapter_name, **self.info)


@dataclass
class LoadedSubject:
    """A saved subject `use_subject` loaded onto a pipeline.

    Attributes:
        adapter_name: The LoRA adapter's name on the pipeline.
        folder: The subject folder.
        info: Its ``siso_subject.json`` (model, resolution, train prompt, photos, ...).
        call_kwargs: What every call of the pipeline must also get to draw the subject: ``{"ip_adapter_image":
            [photos]}`` for a subject learned over an IP-Adapter (loaded by `use_subject`), else ``{}``.
    """

    adapter_name: str
    folder: Path
    info: dict
    call_kwargs: dict


def personalize(
    pipe: DiffusionPipeline,
    photos: Photos,
    prompt: str,
    adapter_name: str = ADAPTER_NAME,
    networks: LossNetworks | None = None,
    progress: bool = True,
    callback: IterationCallback | None = None,
    **settings,
) -> Personalized:
    """Learn the subject of ``photos`` onto ``pipe`` (SISO: a LoRA optimized against the photos at test time) and
    leave it loaded as the adapter ``adapter_name``, so that ``pipe("a dog in Paris", ...)`` draws it.

    Args:
        pipe: A ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``FluxPipeline`` or ``SanaPipeline`` (or
            subclass), in the dtype and on the device the caller chose, or under ``enable_model_cpu_offload``.
        photos: A photo file, a folder of photos, a PIL image, or a list of them: one subject.
        prompt: The prompt learned with (paper Sec. 3.3: simple, "a photo of a dog").
        adapter_name: The new adapter's name; the pipeline must not carry one of that name.
        networks: The similarity networks (`siso.losses.networks.LossNetworks`) on the pipeline's execution device
            and dtype; ``None``: loaded from ``settings``' ``similarity``.
        progress: Show a progress bar.
        callback: Called after every iteration with (iteration, image, loss terms); returning True stops.
        **settings: `SisoConfig` fields as `siso.config.SisoConfig.merged` takes them, over the pipeline family's
            defaults: ``resolution`` (default: 512 for the Hub ids of `siso.backbones.BACKBONES`, else the
            pipeline's own size), ``optim={"max_iters": 20}``, ``lora=``, ``memory=``, ``similarity=``, ...

    Returns:
        The result; the pipeline carries the best iteration's adapter.

    Raises:
        TypeError: an unknown setting.
        ValueError: a setting the pipeline decides or that would change it (model, dtype, device, quantize, an
            IP-Adapter start, compile), an unsupported pipeline or memory switch, an adapter name in use, disabled or
            fused LoRA, an IP-Adapter on the pipeline, networks on another device or dtype.
        siso.images.ImageError: a photo cannot be used.
    """
    cls = pipeline_family(pipe)
    config = _config(pipe, cls, prompt, networks, settings)
    check_lora(pipe, adapter_name)
    if has_ip_adapter(pipe):
        raise ValueError("the pipeline carries an IP-Adapter; personalize learns without one: pipe.unload_ip_adapter()")
    subject, files = _subject(photos)
    with one_device(pipe), kept(pipe), learning(pipe), torch.enable_grad():
        backbone = cls(pipe, config.resolution)
        device, dtype = backbone.device, backbone.dtype
        if networks is None:
            networks = LossNetworks(config.similarity, device, dtype)
        elif not networks.serves(config.similarity, device, dtype):
            raise ValueError(
                f"networks= run on {networks.device} in {networks.dtype} for their own similarity settings; build them "
                f"on device=pipe._execution_device ({device}) in the denoiser's {dtype}, for similarity= of this run"
            )
        try:
            loss, _ = objective(Models(backbone, networks), config, [subject])
            result = optimize_generation(backbone, loss, config, callback, progress, adapter=adapter_name)
        except BaseException:
            if any(adapter_name in getattr(m, "peft_config", {}) for m in components(pipe).values()):
                take_off(pipe, adapter_name)
            raise
        finally:
            backbone.ensure_text_encoders()  # those `memory.offload_text_encoders` parked
    opt = config.optim
    side = backbone.resolution
    call = {"height": side, "width": side, "num_inference_steps": opt.num_inference_steps}
    call |= {"guidance_scale": opt.guidance_scale, **cls.pipeline_call_kwargs}
    info = {"model": config.model, "train_prompt": prompt, "photos": files, "adapter_name": adapter_name}
    return Personalized(result, adapter_name, call, opt.seed, info, backbone)


def subject_folder(subject: str | Path) -> Path:
    """The folder of a saved subject: `use_subject`'s default ``resolve``: a folder path, or a name in the default
    subject library (`siso.library.Library`: ``$SISO_LIBRARY`` or the user data folder).

    Raises:
        siso.library.LibraryError: neither (the message lists the nearest names).
    """
    return Library().resolve(subject)


def use_subject(
    pipe: DiffusionPipeline,
    subject: str | Path,
    adapter_name: str | None = None,
    resolve: Callable[[str | Path], Path] = subject_folder,
) -> LoadedSubject:
    """Load a saved subject onto ``pipe``: its LoRA with the stock ``pipe.load_lora_weights`` as the adapter
    ``adapter_name``, every tensor checked against the pipeline's layers (`siso.lora.load_lora`), beside the adapters
    already active; a subject learned over an IP-Adapter also gets that adapter (the pipeline's own
    ``load_ip_adapter`` and ``set_ip_adapter_scale``), and its photos come back in ``call_kwargs``.

    Args:
        pipe: A pipeline of a family `personalize` takes, as the caller configured it.
        subject: What ``resolve`` turns into the subject's folder.
        adapter_name: The adapter's name; ``None``: the one it was saved with, else ``"subject"``.
        resolve: Subject -> its folder (`subject_folder`: a folder path or a library name).

    Returns:
        The adapter's name, the folder, its ``siso_subject.json`` and the keyword arguments every call needs.

    Raises:
        FileNotFoundError, siso.lora.LoraError: the folder, its weights or its record are missing or damaged, the
            subject was learned on another model family, or its weights do not fit the pipeline.
        ValueError: as `personalize`'s pipeline checks; an IP-Adapter subject on a family without IP-Adapters or on
            a pipeline that carries one.
        siso.hub.ModelLoadError: its IP-Adapter cannot be loaded.
    """
    folder = resolve(subject)
    check_lora_file(folder)
    info = read_subject_info(folder)
    cls = pipeline_family(pipe)
    learned = family(info["model"]) if info.get("model") else None
    if learned not in (None, cls):
        raise LoraError(
            f"{folder} was learned on {info['model']} ({learned.pipeline_class.__name__}); this pipeline "
            f"is a {type(pipe).__name__}: load it onto a {learned.pipeline_class.__name__}"
        )
    ip_adapter = saved_ip_adapter(folder)
    if ip_adapter is not None and (cls.ip_adapter_weight is None or has_ip_adapter(pipe)):
        raise ValueError(f"{folder} was learned over an IP-Adapter; this pipeline takes none or carries one already")
    name = adapter_name or info.get("adapter_name") or ADAPTER_NAME
    check_lora(pipe, name)
    names = (cls.denoiser_name, *cls.text_encoder_names)
    before = {n: active_adapters(getattr(pipe, n)) for n in names}
    with one_device(pipe):
        with kept(pipe):  # the loaders below set their own flags, as on a stock pipeline
            backbone = cls(pipe)
        if ip_adapter is not None:
            settings, _ = ip_adapter
            processors = dict(backbone.denoiser.attn_processors)
            # As `Backbone.load_ip_adapter` loads it, but the image encoder stays: the stock call embeds the photos.
            subfolder, _, file = settings.weight_name.rpartition("/")
            encoder = "models/image_encoder" if "vit-h" in file else "image_encoder"
            load_pretrained(
                pipe.load_ip_adapter,
                settings.model,
                "IP-Adapter",
                subfolder=subfolder,
                weight_name=file,
                image_encoder_folder=encoder,
            )
            pipe.set_ip_adapter_scale(settings.scale)
        try:
            load_lora(backbone, folder, name)
        except LoraError:
            if ip_adapter is not None:
                pipe.unload_ip_adapter()
                backbone.denoiser.set_attn_processor(processors)
            raise
    for n in names:
        module = getattr(pipe, n)
        if before[n] and name in getattr(module, "peft_config", {}):
            activate(module, [*before[n], name])
    call = {} if ip_adapter is None else {"ip_adapter_image": [ip_adapter[1]]}
    return LoadedSubject(name, folder, info, call)


def _config(pipe, cls: type[Backbone], prompt: str, networks: LossNetworks | None, settings: dict) -> SisoConfig:
    for name, fix in PIPELINE_FIELDS.items():
        if name in settings:
            raise ValueError(f"personalize takes no {name} setting: {fix}")
    if networks is not None:
        settings.setdefault("similarity", networks.settings)
    model = None if pipe.name_or_path is None else str(pipe.name_or_path)  # (a Path when loaded from one)
    named = {hub: resolution for hub, _, resolution in BACKBONES.values()}
    settings.setdefault("resolution", named.get(model))
    config = SisoConfig.merged(model, cls.defaults, train_prompt=prompt, **settings)
    refused = {
        "memory.quantize": (config.memory.quantize, "load the pipeline quantized instead (quantization_config=...)"),
        "ip_adapter": (config.ip_adapter.enabled, "learn with siso generate --ip-adapter, then use_subject"),
        "accel.compile": (config.accel.compile, "it would compile the pipeline's modules; compile them yourself"),
    }
    for name, (value, fix) in refused.items():
        if value:
            raise ValueError(f"personalize takes no {name}: {fix}")
    return config


def _subject(photos: Photos) -> tuple[Subject, list[str | None]]:
    """The subject of ``photos`` and its files (``None`` for an image given in memory)."""
    items = [photos] if isinstance(photos, (str, Path, Image.Image)) else list(photos)
    images, files = [], []
    for item in items:
        if isinstance(item, Image.Image):
            images.append(item.convert("RGB"))
            files.append(None)
        else:
            loaded, names = load_photos(item)
            images += loaded
            files += names
    return Subject(images), files
