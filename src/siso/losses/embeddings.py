"""The similarity networks of SISO's loss (paper Eq. 2): image embeddings with differentiable preprocessing.

Each maps images (B, 3, H, W) in [0, 1] to embeddings (B, D), resizing (short side, bicubic, antialiased),
centre-cropping and normalising in torch so that gradients reach the image. A network is built from a loaded module
(the benchmark's random-weight ones, the tests' tiny ones); ``from_pretrained`` loads one by Hub id or folder.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    Called with a tensor (B, 3, H, W) or a list of them (of any sizes: a composition's crops), it preprocesses each
    and runs the network once on them all.

    Args:
        net: The network (frozen here).
        resolution: Input side in pixels; ``None``: the network config's ``image_size``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, net: torch.nn.Module, resolution: int | None = None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.resolution = resolution or net.config.image_size

    def prepare(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """`preprocess` each tensor of ``images`` (B_i, 3, H_i, W_i) in [0, 1] -> (sum B_i, 3, side, side), in the
        network's dtype."""
        if isinstance(images, torch.Tensor):
            pixels = preprocess(images, self.resolution, self.mean, self.std)
        else:
            pixels = torch.cat([preprocess(image, self.resolution, self.mean, self.std) for image in images])
        return pixels.to(self.net.dtype)


class DinoEmbedding(Embedding):
    """DINOv2 CLS token after the final layer norm (the SISO reference code feeds 518 px, ImageNet statistics)."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

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

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], patches: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images -> CLS embeddings (B, D); with ``patches``, also the patch tokens after the final layer norm
        (B, N, D), row by row over the (side / patch size)^2 grid."""
        output = self.net(pixel_values=self.prepare(images))
        if patches:
            return output.pooler_output.float(), output.last_hidden_state[:, 1:].float()
        return output.pooler_output.float()


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

    mean, std = CLIP_MEAN, CLIP_STD

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        resolution: int | None = None,
        device: str | torch.device = "cpu",
        dtype=torch.float32,
        what: str = "IR similarity model",
    ) -> ClipImageEmbedding:
        """Load the vision tower (with its projection) of a CLIP checkpoint, full or vision-only; ``what`` names it in
        errors.

        Raises:
            siso.hub.ModelLoadError: it cannot be loaded, or it is not a CLIP checkpoint.
        """
        net = load_pretrained(
            CLIPVisionModelWithProjection.from_pretrained,
            model,
            what,
            one_tower=True,
            config=clip_vision_config(model, what),
            dtype=dtype,
        ).to(device)
        own_cpu_memory(net)
        return cls(net, resolution)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.net(pixel_values=self.prepare(images)).image_embeds.float()
