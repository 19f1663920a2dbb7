"""LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), in plain torch, plus a background-only (masked) variant.

The ``lpips`` package cannot be used here because it imports torchvision, so this module re-implements the
``alex`` / v0.1 configuration with parameter names that match the published checkpoints: the trunk loads
torchvision's ``alexnet-owt-7be5be79.pth`` and the heads load lpips' ``weights/v0.1/alex.pth`` unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_ALEX_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"

# Indices into torchvision's ``alexnet().features`` whose outputs LPIPS compares (relu1..relu5).
_TAPS = (1, 4, 7, 9, 11)
CHANNELS = (64, 192, 384, 256, 256)
# ImageNet-ish statistics of lpips' ScalingLayer, expressed for inputs already mapped to [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# Smallest side for which relu5 is non-empty (conv 11/4, two 3/2 max-pools before conv3 and relu5 taps).
MIN_SIZE = 31


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` up to relu5, keeping torchvision's indices so its weights load as-is."""

    def __init__(self) -> None:
        super().__init__()
        # Same layer order and indices as torchvision; the final max-pool (index 12) is dropped because LPIPS
        # stops at relu5 and it has no parameters, so the state dict is unchanged.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the relu1..relu5 activations for a (B, 3, H, W) input."""
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                outputs.append(x)
        return outputs


class _LinLayer(nn.Module):
    """One 1x1 conv head; ``model.1`` matches lpips' naming, where ``model.0`` was a training-time dropout."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Identity in place of the dropout: this module only evaluates, and the index keeps the checkpoint's keys.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        # The trained weights are non-negative (lpips clamps them), which keeps distances >= 0; start that way too.
        nn.init.uniform_(self.model[1].weight, 0.0, 1.0 / channels)


class LPIPSHeads(nn.Module):
    """The five linear heads, named ``lin0`` .. ``lin4`` so lpips' ``v0.1/alex.pth`` loads strictly."""

    def __init__(self) -> None:
        super().__init__()
        for index, channels in enumerate(CHANNELS):
            self.add_module(f"lin{index}", _LinLayer(channels))

    def __getitem__(self, index: int) -> _LinLayer:
        return getattr(self, f"lin{index}")


def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # lpips adds eps to the norm (not inside the sqrt); kept identical so scores match the reference.
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an AlexNet trunk; lower means more perceptually similar."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = AlexNetFeatures()
        self.heads = LPIPSHeads()
        # Constants, not learned and not in either checkpoint, so they stay out of the state dict.
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        # lpips expects [-1, 1] (``normalize=True`` maps [0, 1] there) and then applies its ScalingLayer.
        return ((2 * images - 1) - self.shift) / self.scale

    def layer_maps(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distance maps at feature resolution.

        Args:
            x: (B, 3, H, W) images in [0, 1].
            y: images shaped like ``x``.

        Returns:
            Five (B, 1, h_l, w_l) non-negative maps, one per ReLU layer.
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (alex) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}")
        feats_x, feats_y = self.trunk(self._scale(x)), self.trunk(self._scale(y))
        return [
            self.heads[i].model((_unit_normalize(fx) - _unit_normalize(fy)).square())
            for i, (fx, fy) in enumerate(zip(feats_x, feats_y, strict=True))
        ]

    def forward(self, x: torch.Tensor, y: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        """LPIPS distance between two image batches.

        Args:
            x: (B, 3, H, W) images in [0, 1], H and W at least ``MIN_SIZE``.
            y: images shaped like ``x``.
            spatial: return a per-pixel map instead of one value per image.

        Returns:
            (B,) distances, or with ``spatial`` a (B, 1, H, W) map: each layer's map upsampled bilinearly to the
            input size and summed, as lpips' spatial mode does. Its mean is close to, not exactly, the (B,) value.
        """
        maps = self.layer_maps(x, y)
        if spatial:
            size = x.shape[-2:]
            return sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps)
        # As lpips: each layer is averaged at its own resolution (no upsampling), then the layers are summed.
        return sum(m.mean(dim=(1, 2, 3)) for m in maps)


def masked_lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LPIPS averaged over background pixels only (background preservation for subject edits).

    Deep features see far beyond a pixel, so edits inside the mask still raise the map near its border; this
    measures the spatial map outside the mask, it does not make the background features blind to the subject.

    Args:
        model: an ``LPIPS`` module.
        x: (B, 3, H, W) images in [0, 1].
        y: images shaped like ``x``.
        mask: (B, 1, H, W) or (H, W); non-zero marks the subject / edited region to ignore (so soft masks err
            towards ignoring a pixel).

    Returns:
        (B,) mean of the spatial LPIPS map over pixels where ``mask == 0``.

    Raises:
        ValueError: if the mask has the wrong shape or leaves an image with no background pixel.
    """
    height, width = x.shape[-2:]
    mask = mask[None, None] if mask.ndim == 2 else mask  # (H, W) applies to every image in the batch
    if mask.ndim != 4 or mask.shape[1:] != (1, height, width) or mask.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"mask must be (B, 1, H, W) or (H, W) for images {tuple(x.shape)}, got {tuple(mask.shape)}")
    background = (mask == 0).to(x.device).expand(x.shape[0], 1, height, width)
    counts = background.sum(dim=(1, 2, 3))
    if bool((counts == 0).any()):
        raise ValueError("mask covers the whole image for at least one sample: no background pixel to score")
    distance_map = model(x, y, spatial=True)
    return (distance_map * background).sum(dim=(1, 2, 3)) / counts


def _load(path: str | Path, what: str, source: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}; download it from {source} (nothing is fetched here)")
    # weights_only: both files are plain tensor dicts, and this refuses pickled code.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lpips(alexnet_weights: str | Path, lpips_weights: str | Path, device: str | torch.device = "cpu") -> LPIPS:
    """Build LPIPS from the two published checkpoints, loading both strictly.

    Args:
        alexnet_weights: torchvision's ``alexnet-owt-7be5be79.pth`` (ImageNet backbone).
        lpips_weights: lpips' ``weights/v0.1/alex.pth`` (inside the ``lpips`` wheel or its GitHub repository).
        device: where to put the model.

    Returns:
        The model in eval mode with gradients off for its parameters (inputs can still receive gradients).

    Raises:
        FileNotFoundError: a checkpoint is missing; the message says where it comes from.
        ValueError: a head weight is negative, which v0.1 checkpoints never have.
    """
    backbone = _load(alexnet_weights, "AlexNet backbone weights (alexnet-owt-7be5be79.pth)", ALEXNET_URL)
    heads = _load(lpips_weights, "LPIPS v0.1 alex head weights (alex.pth)", f"{LPIPS_ALEX_URL} or the lpips wheel")
    # The ImageNet classifier is unused by LPIPS; drop exactly those keys so strict loading still catches others.
    features = {k: v for k, v in backbone.items() if not k.startswith("classifier.")}
    model = LPIPS()
    model.trunk.load_state_dict(features, strict=True)
    model.heads.load_state_dict(heads, strict=True)
    if any(bool((p < 0).any()) for p in model.heads.parameters()):
        raise ValueError(f"{lpips_weights} has negative head weights; is it an LPIPS v0.1 checkpoint?")
    return model.to(device).eval().requires_grad_(False)
