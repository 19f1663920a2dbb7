"""The paper's IR network: the first-place model of Google's Universal Image Embedding challenge (GUIE, Kaggle),
read natively from its checkpoint file (``ir_features.pth``).

The file is the state dict of the SISO reference code's ``add_layer_model``: ``backbone.*``, an open_clip ViT-H/14
visual tower whose patch convolution ``conv1`` has stride 12 (a 24 x 24 grid at 290 px: 577 tokens), ``fc1``
1024 -> 64 (the embedding) and ``fc2``, the CosFace head of training (not used); keys may carry the ``module.``
prefix of ``DataParallel``. The reference builds the tower with a vendored open_clip fork (config "ViT-H-14-290");
here it is plain torch, its size read from the tensors' shapes. Any prefix before the tower's ``conv1.weight`` is
accepted.

The input side is fixed at `GUIE_SIDE` = 290 px (the fork's config name and the reference's preprocessing); the
patch stride follows from the positional embedding's grid, ``(290 - patch) / (grid - 1)``: (290 - 14) / 23 = 12 for
the real checkpoint. A grid that gives no whole stride is refused rather than guessed.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from siso.devices import own_cpu_memory
from siso.hub import ModelLoadError
from siso.losses.embeddings import CLIP_MEAN, CLIP_STD, Embedding

GUIE_SIDE = 290  # the input side of the fork's "ViT-H-14-290"
HEAD_DIM = 80  # open_clip's ViT-H/14: width 1280, 16 heads
WHAT = "IR similarity model"


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (what open_clip saves)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, width) -> (B, N, width)."""
        b, n, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width))


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-LayerNorm transformer block (exact GELU)."""

    def __init__(self, width: int, mlp_width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, width // HEAD_DIM)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(mlp_width, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTower(nn.Module):
    """open_clip's ``VisionTransformer`` with its parameter names: patch convolution, class token, positional
    embedding, ``ln_pre``, blocks, ``ln_post`` on the class token, ``@ proj``."""

    def __init__(self, width: int, layers: int, patch: int, stride: int, grid: int, mlp_width: int, embed_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=stride, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleDict(
            {"resblocks": nn.ModuleList(ResidualAttentionBlock(width, mlp_width) for _ in range(layers))}
        )
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, side, side) -> projected class token (B, embed_dim)."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # (B, grid^2, width), row by row
        x = torch.cat([self.class_embedding.expand(len(x), 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer["resblocks"]:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


class GuieNet(nn.Module):
    """The GUIE model without its training head: ``fc1(visual(pixels))``, on `GUIE_SIDE` px inputs.

    Args:
        width, layers, patch, grid, mlp_width, embed_dim: The tower's size (ViT-H/14: 1280, 32, 14, 24, 5120, 1024);
            the patch stride is ``(GUIE_SIDE - patch) / (grid - 1)`` (12).
        out_dim: The embedding size (64).

    Raises:
        ValueError: the grid gives no whole stride.
    """

    image_size = GUIE_SIDE

    def __init__(self, width: int, layers: int, patch: int, grid: int, mlp_width: int, embed_dim: int, out_dim: int):
        super().__init__()
        if grid < 2 or (GUIE_SIDE - patch) % (grid - 1):
            raise ValueError(f"a {grid} x {grid} grid of {patch} px patches has no whole stride at {GUIE_SIDE} px")
        stride = (GUIE_SIDE - patch) // (grid - 1)
        self.visual = VisionTower(width, layers, patch, stride, grid, mlp_width, embed_dim)
        self.fc1 = nn.Linear(embed_dim, out_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc1.weight.dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, image_size, image_size) -> embeddings (B, out_dim)."""
        return self.fc1(self.visual(pixels))

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], name: str) -> GuieNet:
        """Build the net sized by ``state``'s tensors and load them (assigned, not copied).

        Args:
            state: ``fc1.*`` and an open_clip tower under any prefix, ``module.`` stripped; ``fc2.*`` is ignored.
            name: The file, for messages.

        Raises:
            ModelLoadError: ``state`` lacks the tower or ``fc1``, has keys the net does not, or its shapes disagree.
        """
        towers = [key.removesuffix("conv1.weight") for key in state if key.endswith("conv1.weight")]
        if len(towers) != 1:
            raise ModelLoadError(f"{WHAT} {name!r} is not the GUIE model: no single open_clip tower ('conv1.weight')")
        prefix = towers[0]
        renamed = {}
        for key, tensor in state.items():
            if key.startswith("fc1."):
                renamed[key] = tensor
            elif key.startswith(prefix) and not key.startswith("fc2."):
                renamed["visual." + key.removeprefix(prefix)] = tensor
            elif not key.startswith("fc2."):
                raise ModelLoadError(f"{WHAT} {name!r} is not the GUIE model: unexpected key {key!r}")
        try:
            width, _, patch, _ = renamed["visual.conv1.weight"].shape
            tokens = len(renamed["visual.positional_embedding"])
            mlp_width = len(renamed["visual.transformer.resblocks.0.mlp.c_fc.weight"])
            embed_dim, out_dim = renamed["visual.proj"].shape[1], len(renamed["fc1.weight"])
        except KeyError as err:
            raise ModelLoadError(f"{WHAT} {name!r} is not the GUIE model: it has no {err.args[0]!r}") from None
        grid = round((tokens - 1) ** 0.5)
        if grid * grid != tokens - 1 or width % HEAD_DIM:
            raise ModelLoadError(
                f"{WHAT} {name!r} is not the GUIE model: {tokens} positions (not a square grid + 1) or width {width} "
                f"(not a multiple of the head size {HEAD_DIM})"
            )
        layers = 1 + max(int(m[1]) for k in renamed if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k)))
        try:
            with torch.device("meta"):
                net = cls(width, layers, patch, grid, mlp_width, embed_dim, out_dim)
        except ValueError as err:
            raise ModelLoadError(f"{WHAT} {name!r} is not the GUIE model: {err}") from None
        expected = net.state_dict()
        wrong = sorted(expected.keys() ^ renamed.keys()) or [
            k for k in expected if expected[k].shape != renamed[k].shape
        ]
        if wrong:
            raise ModelLoadError(
                f"{WHAT} {name!r} is not the GUIE model: key {wrong[0]!r} is missing, unexpected or of another shape "
                f"than a {layers}-layer tower of width {width} needs"
            )
        net.load_state_dict(renamed, assign=True)
        return net


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (``torch.load(weights_only=True)``; a dict nested under ``"state_dict"`` or
    ``"model"`` is taken), with ``DataParallel``'s ``module.`` prefix removed.

    Raises:
        ModelLoadError: the file is not one ``torch.load`` reads without unpickling code, or holds no tensor dict.
    """
    if not Path(path).expanduser().is_file():
        raise ModelLoadError(f"{WHAT} file {path} does not exist")
    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # torch's own refusal is paragraphs long and suggests weights_only=False, unsafe for a downloaded file
        if "Weights only load failed" in str(err):
            reason = "it holds Python objects besides tensors, which are not unpickled (they could run code)"
        else:
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        raise ModelLoadError(
            f"cannot load {WHAT} {str(path)!r}: not a file of tensors that torch.load(weights_only=True) reads "
            f"({reason})"
        ) from None
    if isinstance(state, dict):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{WHAT} {str(path)!r} holds a {type(state).__name__} that is not a dict of tensors")
    return {str(key).removeprefix("module."): tensor for key, tensor in state.items()}


class GuieEmbedding(Embedding):
    """The GUIE model's 64-d embedding (``fc1`` output) of images resized and centre-cropped to 290 px, CLIP
    statistics, as the reference code feeds it.

    Args:
        net: The network.
        resolution: Input side; ``None``: the net's ``image_size`` (290, the side its stride and grid are for).
    """

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, net: GuieNet, resolution: int | None = None):
        super().__init__(net, resolution or net.image_size)

    @classmethod
    def from_pretrained(
        cls, path: str, resolution: int | None = None, device: str | torch.device = "cpu", dtype=torch.float32
    ) -> GuieEmbedding:
        """Load the GUIE checkpoint file ``path`` onto ``device`` in ``dtype``.

        Args:
            resolution: ``None`` or 290: the grid is fixed.

        Raises:
            siso.hub.ModelLoadError: the file cannot be read, is not the GUIE layout, or ``resolution`` is not 290.
        """
        net = GuieNet.from_state_dict(read_state_dict(path), path)
        if resolution not in (None, net.image_size):
            raise ModelLoadError(
                f"{WHAT} {path!r} takes {net.image_size} px inputs (its fixed grid), not an IR resolution of "
                f"{resolution}"
            )
        net.to(device, dtype)
        own_cpu_memory(net)
        return cls(net)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], or a list of them -> embeddings (B, 64), differentiable w.r.t. them."""
        return self.net(self.prepare(images)).float()


def is_guie_checkpoint(model: str) -> bool:
    """Whether the IR ``model`` setting names a file (the GUIE checkpoint) rather than a Hub id or folder: an
    existing file, or a name ending in ``.pth`` / ``.pt`` (so that a mistyped path says the file is missing)."""
    path = Path(model).expanduser()
    return path.is_file() or path.suffix in (".pth", ".pt")


def describe_ir(model: str) -> str:
    """A one-line description of the IR network ``model`` names, for config.json and metrics.json."""
    if is_guie_checkpoint(model):
        return f"GUIE first-place model (Google Universal Image Embedding, the paper's IR network) from {model}"
    return f"CLIP image embedding of {model}, a substitute for the paper's GUIE model"
