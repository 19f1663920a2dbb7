"""The similarity loss of SISO (paper Eq. 2): ``a * (1 - cos DINO) + b * (1 - cos IR)``.

Each similarity network is a registry entry with one signature, ``(model, resolution, device, dtype) -> module``,
whose module maps images (B, 3, H, W) in [0, 1] to embeddings (B, D) with differentiable preprocessing (resize of
the short side with antialiasing, centre crop, normalisation), all in torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Model

from siso.config import SimilaritySettings
from siso.hub import ModelLoadError, load_pretrained, require_model_type
from siso.images import pil_to_tensor

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def preprocess(images: torch.Tensor, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """Resize the short side to ``size`` (bicubic, antialiased), centre-crop to ``size`` x ``size``, normalise.

    Args:
        images: (B, 3, H, W) in [0, 1].

    Returns:
        (B, 3, size, size) normalised tensor, differentiable w.r.t. ``images``.
    """
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    images = images[..., top : top + size, left : left + size]
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


class _Embedding(torch.nn.Module):
    net: torch.nn.Module
    resolution: int

    @classmethod
    def from_network(cls, net: torch.nn.Module, resolution: int | None = None) -> _Embedding:
        """Wrap an already built network (e.g. `siso.bench`'s random-weight ones) instead of loading one."""
        embedding = cls.__new__(cls)
        torch.nn.Module.__init__(embedding)
        embedding.net = net.eval().requires_grad_(False)
        embedding.resolution = resolution or net.config.image_size
        return embedding


class DinoEmbedding(_Embedding):
    """DINOv2 CLS token after the final layer norm (the SISO reference code feeds 518 px, ImageNet statistics)."""

    def __init__(self, model: str, resolution: int | None, device, dtype):
        super().__init__()
        require_model_type(model, "DINO similarity model", "dinov2", "DINOv2")
        self.net = load_pretrained(Dinov2Model.from_pretrained, model, "DINO similarity model", dtype=dtype)
        self.net.to(device).eval().requires_grad_(False)
        self.resolution = resolution or self.net.config.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = preprocess(images, self.resolution, IMAGENET_MEAN, IMAGENET_STD).to(self.net.dtype)
        return self.net(pixel_values=pixels).pooler_output.float()


def clip_vision_config(model: str, what: str = "IR similarity model") -> CLIPVisionConfig:
    """The vision tower's config of a CLIP checkpoint, full (``CLIPModel``) or vision-only.

    Of a full CLIP config the projection size is the top-level ``projection_dim``, the one its
    ``visual_projection`` weights have: the nested ``vision_config`` written by an older transformers may lack it
    (transformers then uses its default, 512) or contradict it (laion/CLIP-ViT-H-14-laion2B-s32B-b79K: 1024).

    Raises:
        ModelLoadError: the config cannot be read, or the checkpoint is not a CLIP model.
    """
    config = load_pretrained(CLIPConfig.get_config_dict, model, what)[0]
    kind = config.get("model_type")
    if kind == "clip_vision_model":
        return CLIPVisionConfig.from_dict(config)
    if kind != "clip":
        raise ModelLoadError(f"{what} {model!r} is a {kind} model, not CLIP; pass a CLIP checkpoint")
    full = CLIPConfig.from_dict(config)
    full.vision_config.projection_dim = full.projection_dim
    return full.vision_config


class ClipImageEmbedding(_Embedding):
    """Projected CLIP image embedding: the default stand-in for the paper's IR (GUIE) model."""

    def __init__(self, model: str, resolution: int | None, device, dtype):
        super().__init__()
        self.net = load_pretrained(
            CLIPVisionModelWithProjection.from_pretrained,
            model,
            "IR similarity model",
            one_tower=True,
            config=clip_vision_config(model),
            dtype=dtype,
        )
        self.net.to(device).eval().requires_grad_(False)
        self.resolution = resolution or self.net.config.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = preprocess(images, self.resolution, CLIP_MEAN, CLIP_STD).to(self.net.dtype)
        return self.net(pixel_values=pixels).image_embeds.float()


SimilarityFactory = Callable[[str, "int | None", "torch.device | str", torch.dtype], torch.nn.Module]
SIMILARITY_NETS: dict[str, SimilarityFactory] = {"dino": DinoEmbedding, "ir": ClipImageEmbedding}


class SimilarityLoss(torch.nn.Module):
    """``sum_k w_k * (1 - cos(f_k(x), f_k(x_s)))`` over the similarity networks with a non-zero weight.

    The subject's embeddings are computed once, without gradient.
    """

    def __init__(self, settings: SimilaritySettings, subject: Image.Image, device, dtype: torch.dtype):
        super().__init__()
        specs = {
            "dino": (settings.dino_model, settings.dino_resolution, settings.dino_weight),
            "ir": (settings.ir_model, settings.ir_resolution, settings.ir_weight),
        }
        self.weights = {name: weight for name, (_, _, weight) in specs.items() if weight > 0}
        self.nets = torch.nn.ModuleDict(
            {
                name: SIMILARITY_NETS[name](model, res, device, dtype)
                for name, (model, res, _) in specs.items()
                if name in self.weights
            }
        )
        self.set_subject(subject)

    @classmethod
    def from_networks(
        cls, nets: dict[str, torch.nn.Module], subject: Image.Image, weights: dict[str, float] | None = None
    ) -> SimilarityLoss:
        """The loss over already built embedding modules (``DinoEmbedding.from_network(...)``, ...), weight 1 each
        unless ``weights`` says otherwise."""
        loss = cls.__new__(cls)
        torch.nn.Module.__init__(loss)
        loss.weights = weights or dict.fromkeys(nets, 1.0)
        loss.nets = torch.nn.ModuleDict(nets)
        loss.set_subject(subject)
        return loss

    @torch.no_grad()
    def set_subject(self, subject: Image.Image) -> None:
        """Compute the subject's reference embeddings (once per subject; the networks are reused)."""
        reference = pil_to_tensor(subject).to(next(iter(self.nets.values())).net.device)
        self.references = {name: F.normalize(net(reference), dim=-1) for name, net in self.nets.items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for images (B, 3, H, W) in [0, 1].

        Returns:
            ``{name: 1 - cos}`` per network (each of shape (B,)) and ``"loss"``, their weighted sum averaged over
            the batch (a scalar).
        """
        terms = {
            name: 1 - (F.normalize(net(images), dim=-1) * self.references[name]).sum(-1)
            for name, net in self.nets.items()
        }
        terms["loss"] = sum(self.weights[name] * term for name, term in terms.items()).mean()
        return terms
