"""Per-item metrics: a registry of same-signature scorers, each built from a model id or local folder.

A metric is built once with ``METRICS[name].build(model, device)`` and then called as
``metric(generated, item) -> float`` on the item's generated images (RGB PIL). Identity metrics average the cosine
similarity of every generated image with every real photo of the subject (the DreamBench protocol); CLIP-T averages
image-prompt cosine similarity; ``mse`` is the paper's diversity measure against the one subject photo given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, ViTModel

from siso.devices import own_cpu_memory
from siso.eval.inception import load_fid_inception
from siso.eval.lpips import ALEXNET_URL, LPIPS_ALEX_URL, load_lpips, masked_lpips
from siso.eval.multi import BoxedSubject
from siso.eval.suites import EvalItem, SuiteError
from siso.hub import load_pretrained
from siso.images import pil_to_tensor
from siso.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipImageEmbedding,
    DinoEmbedding,
    Embedding,
    load_ir,
    preprocess,
)
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, ObjectSegmenter


def read_rgb(path: str | Path) -> Image.Image:
    """Read an image file as RGB.

    Raises:
        SuiteError: the file is missing, not an image, or damaged.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise SuiteError(f"cannot read image {path}: {err}") from None


def to_batch(images: list[Image.Image], size: int) -> torch.Tensor:
    """Images of any sizes -> (N, 3, size, size) in [0, 1] (short side resized with antialiasing, centre-cropped)."""
    return torch.cat([preprocess(pil_to_tensor(img), size, (0, 0, 0), (1, 1, 1)) for img in images])


class DinoV1Embedding(Embedding):
    """DINO ViT CLS token after the final norm (``facebook/dino-vits16``: the DreamBench DINO metric)."""

    @classmethod
    def from_pretrained(
        cls, model: str, resolution: int | None = None, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> DinoV1Embedding:
        """Load a ``ViTModel`` (Hub id or folder) onto ``device`` in ``dtype``.

        Raises:
            siso.hub.ModelLoadError: it cannot be loaded.
        """
        net = load_pretrained(ViTModel.from_pretrained, model, "DINO metric model", add_pooling_layer=False)
        net.to(device, dtype)
        own_cpu_memory(net)
        return cls(net, resolution)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = preprocess(images, self.resolution, IMAGENET_MEAN, IMAGENET_STD).to(self.net.dtype)
        return self.net(pixel_values=pixels).last_hidden_state[:, 0].float()


EMBEDDERS: dict[str, Callable[[str, str], torch.nn.Module]] = {
    "dino": lambda model, device: DinoV1Embedding.from_pretrained(model, None, device),
    "dinov2": lambda model, device: DinoEmbedding.from_pretrained(model, None, device),
    "clip": lambda model, device: ClipImageEmbedding.from_pretrained(model, None, device),
    "ir": lambda model, device: load_ir(model, None, device),
    "inception": lambda weights, device: load_fid_inception(weights, device),
}


@cache
def image_embedder(kind: str, model: str, device: str) -> torch.nn.Module:
    """A network of `EMBEDDERS` mapping images (B, 3, r, r) in [0, 1] to (B, D), with a ``resolution`` r.

    Cached: metrics that use the same network (CLIP-I and CLIP-T on one CLIP) load it once per process.
    """
    return EMBEDDERS[kind](model, device)


class IdentityMetric:
    """Mean cosine similarity between each generated image and each real photo of the subject."""

    def __init__(self, kind: str, model: str, device: str):
        self.embed = image_embedder(kind, model, device)
        self.device = device
        self._references: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length embeddings of ``images``."""
        return F.normalize(self.embed(to_batch(images, self.embed.resolution).to(self.device)), dim=-1)

    def references(self, item: EvalItem | BoxedSubject) -> torch.Tensor:
        """(R, D) unit-length embeddings of the real photos of ``item``'s subject, computed once per subject."""
        if item.subject not in self._references:
            self._references[item.subject] = self.features([read_rgb(p) for p in item.references])
        return self._references[item.subject]

    def __call__(self, generated: list[Image.Image], item: EvalItem | BoxedSubject) -> float:
        return float((self.features(generated) @ self.references(item).T).mean())


class ClipTextMetric:
    """CLIP-T: mean cosine similarity between each generated image and the prompt (both projected CLIP embeddings).

    Reported as a plain cosine (not the x100, clipped "CLIPScore" scale).
    """

    def __init__(self, model: str, device: str):
        self.image = image_embedder("clip", model, device)
        self.text = load_pretrained(
            CLIPTextModelWithProjection.from_pretrained, model, "CLIP-T text model", one_tower=True
        )
        self.text.to(device).eval().requires_grad_(False)
        own_cpu_memory(self.text)
        self.tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, model, "CLIP-T tokenizer")
        self.device = device

    @torch.no_grad()
    def __call__(self, generated: list[Image.Image], item: EvalItem) -> float:
        tokens = self.tokenizer([item.prompt], padding=True, truncation=True, return_tensors="pt").to(self.device)
        text = F.normalize(self.text(**tokens).text_embeds, dim=-1)
        images = F.normalize(self.image(to_batch(generated, self.image.resolution).to(self.device)), dim=-1)
        return float((images @ text.T).mean())


class PixelMSE:
    """Mean squared error in [0, 1] pixels between each generated image and the subject photo (paper's diversity),
    both resized and centre-cropped to 256 x 256."""

    def __call__(self, generated: list[Image.Image], item: EvalItem) -> float:
        subject = to_batch([read_rgb(item.subject_image)], 256)
        return float((to_batch(generated, 256) - subject).square().mean())


class BackgroundLPIPS:
    """Background preservation (editing): LPIPS-alex between each edited image and the input photo, averaged over
    the input's background (outside the subject mask), both resized to 512 x 512 as ImagenHub does.

    The mask is the item's mask file when the suite has one, else the paper's: SAM's segmentation of the Grounding
    DINO box of the subject class in the input (`siso.vision.segmenter.ObjectSegmenter.segment`: largest region, holes
    filled, not dilated). An input where nothing is detected is compared over the whole image.
    """

    SIZE = 512

    def __init__(
        self,
        weights: str | None,
        device: str,
        detector: str = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        box_threshold: float = 0.3,
    ):
        if weights is None:
            raise ValueError(
                "lpips_bg needs the LPIPS weights: a folder with alexnet-owt-7be5be79.pth "
                f"({ALEXNET_URL}) and alex.pth ({LPIPS_ALEX_URL}); pass --metric-model lpips_bg=DIR"
            )
        folder = Path(weights)
        self.model = load_lpips(folder / Path(ALEXNET_URL).name, folder / "alex.pth", device)
        self.device = device
        self.detector_name = detector
        self.segmenter_name = segmenter
        self.box_threshold = box_threshold
        self.segmenter: ObjectSegmenter | None = None  # loaded on the first item without a mask file

    def _mask(self, item: EvalItem, source: Image.Image) -> torch.Tensor:
        if item.mask is not None:
            with Image.open(item.mask) as img:
                mask = img.convert("L").resize((self.SIZE, self.SIZE), Image.Resampling.NEAREST)
            return torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
        if self.segmenter is None:
            self.segmenter = ObjectSegmenter(self.detector_name, self.segmenter_name, self.device, self.box_threshold)
        mask = self.segmenter.segment(source, item.class_name)
        if mask is None:
            return torch.zeros(1, 1, self.SIZE, self.SIZE)
        return torch.from_numpy(mask).float()[None, None]

    @torch.no_grad()
    def __call__(self, generated: list[Image.Image], item: EvalItem) -> float:
        if item.input_image is None:
            raise SuiteError(f"lpips_bg needs an editing suite (item {item.id} has no input photo)")
        size = (self.SIZE, self.SIZE)
        source = read_rgb(item.input_image).resize(size, Image.Resampling.LANCZOS)
        mask = self._mask(item, source).to(self.device)
        x = torch.cat([pil_to_tensor(img.resize(size, Image.Resampling.LANCZOS)) for img in generated]).to(self.device)
        y = pil_to_tensor(source).to(self.device).expand_as(x)
        return float(masked_lpips(self.model, x, y, mask.expand(len(x), -1, -1, -1)).mean())


@dataclass(frozen=True)
class MetricSpec:
    """A registry entry: what the metric measures, its default model, how to build it, and whether it is an
    identity metric (an `IdentityMetric`: multi-subject items score it per subject, on the subject's box)."""

    description: str
    default_model: str | None
    build: Callable[[str | None, str], Callable[[list[Image.Image], EvalItem], float]]
    identity: bool = False


METRICS: dict[str, MetricSpec] = {
    "dino": MetricSpec(
        "identity, DINO ViT-S/16 (DreamBench)",
        "facebook/dino-vits16",
        lambda model, device: IdentityMetric("dino", model, device),
        identity=True,
    ),
    "dinov2": MetricSpec(
        "identity, DINOv2 (the SISO loss network)",
        "facebook/dinov2-large",
        lambda model, device: IdentityMetric("dinov2", model, device),
        identity=True,
    ),
    "clip_i": MetricSpec(
        "identity, CLIP image embedding",
        "openai/clip-vit-base-patch32",
        lambda model, device: IdentityMetric("clip", model, device),
        identity=True,
    ),
    "ir": MetricSpec(
        "identity, the IR embedding of the SISO loss: the paper's GUIE model given its file (ir=FILE.pth), else a "
        "CLIP substitute (see README)",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        lambda model, device: IdentityMetric("ir", model, device),
        identity=True,
    ),
    "clip_t": MetricSpec(
        "prompt adherence, CLIP image-text cosine",
        "openai/clip-vit-base-patch32",
        lambda model, device: ClipTextMetric(model, device),
    ),
    "mse": MetricSpec("diversity, pixel MSE to the subject photo", None, lambda model, device: PixelMSE()),
    "lpips_bg": MetricSpec(
        "background preservation (editing suites), LPIPS-alex outside the subject mask",
        None,
        lambda weights, device: BackgroundLPIPS(weights, device),
    ),
}
DEFAULT_METRICS = ("dino", "clip_i", "clip_t")


def build_metrics(names: list[str], models: dict[str, str], device: str, registry=None) -> dict[str, Callable]:
    """Build the named metrics of ``registry`` (default `METRICS`); ``models`` overrides default model ids.

    Raises:
        ValueError: an unknown metric name, or a model override for a metric that is not requested.
    """
    registry = METRICS if registry is None else registry
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    extra = [n for n in models if n not in names]
    if extra:
        raise ValueError(f"model given for metric(s) not requested: {', '.join(extra)}")
    return {name: registry[name].build(models.get(name, registry[name].default_model), device) for name in names}
