"""The similarity networks of SISO's loss (paper Eq. 2): image embeddings with differentiable preprocessing.

Each maps images (B, 3, H, W) in [0, 1] to embeddings (B, D), resizing (short side, bicubic, antialiased),
centre-cropping and normalising in torch so that gradients reach the image. A network is built from a loaded module
(the benchmark's random-weight ones, the tests' tiny ones); ``from_pretrained`` loads one by Hub id or folder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Model

from siso.devices import own_cpu_memory
from siso.hub import ModelLoadError, load_pretrained, require_model_type

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


class Embedding(torch.nn.Module):
    """A frozen vision network and the input side it sees.

    Args:
        net: The network (frozen here).
        resolution: Input side in pixels; ``None``: the network config's ``image_size``.
    """

    def __init__(self, net: torch.nn.Module, resolution: int | None = None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.resolution = resolution or net.config.image_size


class DinoEmbedding(Embedding):
    """DINOv2 CLS token after the final layer norm (the SISO reference code feeds 518 px, ImageNet statistics)."""

    @classmethod
    def from_pretrained(
        cls, model: str, resolution: int | None = None, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> DinoEmbedding:
        """Load a ``Dinov2Model`` (Hub id or folder) onto ``device`` in ``dtype``.

        Raises:
            siso.hub.ModelLoadError: it cannot be loaded, or it is not a DINOv2 checkpoint.
        """
        require_model_type(model, "DINO similarity model", "dinov2", "DINOv2")
        net = load_pretrained(Dinov2Model.from_pretrained, model, "DINO similarity model", dtype=dtype).to(device)
        own_cpu_memory(net)
        return cls(net, resolution)

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


class ClipImageEmbedding(Embedding):
    """Projected CLIP image embedding: the default stand-in for the paper's IR (GUIE) model."""

    @classmethod
    def from_pretrained(
        cls, model: str, resolution: int | None = None, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> ClipImageEmbedding:
        """Load the vision tower (with its projection) of a CLIP checkpoint, full or vision-only.

        Raises:
            siso.hub.ModelLoadError: it cannot be loaded, or it is not a CLIP checkpoint.
        """
        net = load_pretrained(
            CLIPVisionModelWithProjection.from_pretrained,
            model,
            "IR similarity model",
            one_tower=True,
            config=clip_vision_config(model),
            dtype=dtype,
        ).to(device)
        own_cpu_memory(net)
        return cls(net, resolution)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = preprocess(images, self.resolution, CLIP_MEAN, CLIP_STD).to(self.net.dtype)
        return self.net(pixel_values=pixels).image_embeds.float()
