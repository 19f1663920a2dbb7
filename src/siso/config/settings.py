"""The settings of a SISO generation run, one dataclass per stage (`siso.config.run.SisoConfig` holds them; the
composition's are in `siso.config.compose`).

Defaults follow the SISO paper (arXiv 2503.16025) unless the docstring says otherwise; the README has a table that
maps each default to the paper's and the reference code's value.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import TypeVar

from siso.config.fields import setting

T = TypeVar("T")

# "auto": bf16 on CUDA, fp32 elsewhere (`siso.devices.resolve_dtype`); the CLI records the dtype it picked.
DTYPES = ("auto", "fp32", "bf16", "fp16")
# --quantize methods of the frozen denoiser (`siso.backbones.quantize`).
QUANTIZE_METHODS = ("int8", "nf4")
# What torch.Generator.manual_seed accepts (a negative seed s is taken as 2**64 + s).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def check_seed(seed: int, name: str = "seed") -> None:
    """Raise ValueError unless ``torch.Generator().manual_seed(seed)`` accepts ``seed``."""
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be between {SEED_MIN} and {SEED_MAX} (2**64 - 1), got {seed}")


@dataclass
class LoraSettings:
    """LoRA adapters on the denoiser (paper Sec. 3.1).

    Attributes:
        rank: LoRA rank r (paper: 4).
        alpha: LoRA alpha; ``None`` means ``alpha = rank`` so that a stock ``load_lora_weights`` (which assumes
            alpha = r when no metadata is read) reproduces our images.
        train_text_encoder: Also put LoRA on the CLIP text encoder(s) (the reference code does for SDXL).
        text_encoder_lr: Learning rate of the text-encoder LoRA; ``None`` means the denoiser's lr.
        text_encoder_weight_decay: AdamW weight decay of the text-encoder LoRA; ``None`` means the denoiser's.
    """

    rank: int = setting(4, flag="--rank", help="LoRA rank ({rank})", filled=True, minimum=1)
    alpha: float | None = None
    train_text_encoder: bool = setting(False, flag="--text-encoder-lora", help="also train LoRA on the text encoder(s)")
    text_encoder_lr: float | None = None
    text_encoder_weight_decay: float | None = None

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha}")
        if self.text_encoder_lr is not None and not (math.isfinite(self.text_encoder_lr) and self.text_encoder_lr > 0):
            raise ValueError(f"text_encoder_lr must be a finite number > 0, got {self.text_encoder_lr}")
        decay = self.text_encoder_weight_decay
        if decay is not None and not (math.isfinite(decay) and decay >= 0):
            raise ValueError(f"text_encoder_weight_decay must be a finite number >= 0, got {decay}")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass
class SimilaritySettings:
    """The similarity loss ``a * (1 - cos DINO) + b * (1 - cos IR)`` (paper Eq. 2, a = b = 1).

    Attributes:
        dino_model: Hub id or local directory of a ``Dinov2Model`` (paper: DINOv2 ViT-L/14).
        ir_model: The paper's IR model, the GUIE first-place checkpoint file (``ir_features.pth`` from Kaggle,
            `siso.losses.guie`; it is on no hub), or a Hub id or local directory of a CLIP checkpoint whose projected
            image embedding stands in for it. The default is the LAION ViT-H/14 CLIP the GUIE model was fine-tuned
            from: a substitute, and results made with it must say so.
        dino_weight: a in Eq. 2.
        ir_weight: b in Eq. 2.
        dino_resolution: Input side in pixels; ``None`` means the model config's ``image_size`` (518 for
            dinov2-large, as the reference code feeds).
        ir_resolution: Input side in pixels; ``None`` means the model config's ``image_size`` (the GUIE checkpoint
            takes 290 only).
    """

    dino_model: str = setting(
        "facebook/dinov2-large", flag="--dino-model", metavar="ID|DIR", help="DINOv2 model ({dino_model})", filled=True
    )
    ir_model: str = setting(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        flag="--ir-model",
        metavar="ID|DIR|FILE.pth",
        help="IR term: the paper's GUIE model as its Kaggle checkpoint file (ir_features.pth), or a CLIP model "
        "standing in for it ({ir_model}, a substitute)",
        filled=True,
    )
    dino_weight: float = 1.0
    ir_weight: float = 1.0
    dino_resolution: int | None = setting(
        None, flag="--dino-resolution", metavar="PX", help="DINO input side (model config: 518)", minimum=14
    )
    ir_resolution: int | None = setting(
        None,
        flag="--ir-resolution",
        metavar="PX",
        help="IR input side (CLIP: model config, 224; GUIE: 290 only)",
        minimum=14,
    )

    def __post_init__(self):
        if not all(math.isfinite(w) and w >= 0 for w in (self.dino_weight, self.ir_weight)):
            raise ValueError(
                f"loss weights must be finite numbers >= 0, got dino={self.dino_weight}, ir={self.ir_weight}"
            )
        if self.dino_weight == 0 and self.ir_weight == 0:
            raise ValueError("at least one of dino_weight and ir_weight must be > 0")
        for name in ("dino_resolution", "ir_resolution"):
            value = getattr(self, name)
            if value is not None and value < 14:
                raise ValueError(f"{name} must be >= 14 pixels, got {value}")


@dataclass
class OptimSettings:
    """The test-time optimization loop (paper Sec. 3.2 and Appendix C).

    Attributes:
        lr: AdamW learning rate (paper: 3e-4; reference README: 2e-4 for SDXL-Turbo).
        max_iters: Iteration cap (reference code: 50).
        patience: Early stopping n: stop after this many iterations without improvement (paper: 7).
        min_improvement: Early stopping x as a fraction: an iteration improves iff
            ``best - loss > min_improvement * |best|`` (paper: 3 %).
        weight_decay: AdamW weight decay (reference code: 1e-2).
        grad_clip: Gradient-norm clip (reference code: 1.0).
        num_inference_steps: Denoising steps per iteration during optimization (reference: 1).
        grad_steps: How many of the last steps keep their graph (reference: 1); earlier steps run under no-grad.
        guidance_scale: Classifier-free guidance during optimization; turbo models use 0 (off).
        seed: Seed of the fixed starting noise (and of any sampler noise).
    """

    lr: float = setting(
        3e-4,
        flag="--lr",
        help="AdamW learning rate (backbone's; {lr} for SD/SDXL)",
        label="Learning rate",
        minimum=0,
    )
    max_iters: int = setting(
        50, flag="--max-iters", help="iteration cap ({max_iters})", label="Max iterations", minimum=1
    )
    patience: int = setting(
        7,
        flag="--patience",
        help="early stopping: iterations without improvement (backbone's; {patience} for SD/SDXL)",
        minimum=1,
    )
    min_improvement: float = setting(
        0.03,
        flag="--min-improvement",
        help="early stopping: relative improvement that counts ({min_improvement})",
        minimum=0,
        maximum=1,
    )
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    num_inference_steps: int = setting(
        1,
        flag="--train-steps",
        metavar="N",
        help="denoising steps while optimizing (backbone's; {num_inference_steps} for SD/SDXL)",
        minimum=1,
    )
    grad_steps: int = setting(
        1,
        flag="--grad-steps",
        metavar="K",
        help="last steps that keep gradients while optimizing (backbone's; {grad_steps})",
        minimum=1,
    )
    guidance_scale: float = setting(
        0.0, flag="--guidance-scale", help="CFG scale (backbone's; turbo models: {guidance_scale:g})", minimum=0
    )
    # A negative seed s is the seed 2**64 + s, so 0..SEED_MAX are all the seeds there are.
    seed: int = setting(
        0,
        flag="--seed",
        help="seed of the optimization noise ({seed})",
        filled=True,
        label="Seed",
        minimum=0,
        maximum=SEED_MAX,
    )

    def __post_init__(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {self.max_iters}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.min_improvement < 1:  # also false for nan
            raise ValueError(f"min_improvement is a fraction in [0, 1), got {self.min_improvement}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite number > 0, got {self.grad_clip}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 1 <= self.grad_steps <= self.num_inference_steps:
            raise ValueError(
                f"grad_steps must be between 1 and num_inference_steps ({self.num_inference_steps}), "
                f"got {self.grad_steps}"
            )
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {self.guidance_scale}")
        check_seed(self.seed)


@dataclass
class MemorySettings:
    """Options that trade time for memory (what a 12B model needs to optimize on a 24 GB GPU).

    Attributes:
        offload_text_encoders: After the prompt is encoded, take the text encoders that get no LoRA out of the
            compute device's memory until a new prompt needs them: moved to CPU RAM from a GPU, freed (and loaded
            again when needed) when the device is the CPU. Images are unchanged.
        gradient_checkpointing: Recompute the denoiser's (and, where diffusers supports it, the VAE decoder's)
            activations during the backward pass instead of keeping them. Images are unchanged; each iteration
            takes longer.
        quantize: Quantize the frozen denoiser's linear weights on loading (the LoRA stays in full precision):
            ``int8`` (torchao int8 weight-only; CPU and CUDA) or ``nf4`` (bitsandbytes 4-bit NF4; CUDA only).
            Changes the images a little (the base model is approximated). ``None``: off.
    """

    offload_text_encoders: bool = setting(
        True,
        flag="--keep-text-encoders",
        help="keep the text encoders on the device while optimizing (default: moved off, or freed on CPU, once the "
        "prompt is encoded)",
        to_field=operator.not_,
    )
    gradient_checkpointing: bool = setting(
        False,
        flag="--gradient-checkpointing",
        help="recompute the denoiser's and VAE decoder's activations in the backward pass: less memory, slower, "
        "same images",
    )
    quantize: str | None = setting(
        None,
        flag="--quantize",
        choices=QUANTIZE_METHODS,
        help="quantize the frozen denoiser (LoRA stays full precision): int8 (torchao; CPU and CUDA) or nf4 "
        "(bitsandbytes; CUDA only); pip install 'siso[quantize]'",
    )

    def __post_init__(self):
        if self.quantize is not None and self.quantize not in QUANTIZE_METHODS:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_METHODS)}, got {self.quantize!r}")


# DINOv2's input side under `FastSettings` (instead of dinov2-large's 518).
FAST_DINO_RESOLUTION = 224


@dataclass
class FastSettings:
    """The opt-in fast loss (``--fast``). It is not the paper's loss: the images are scored through a tiny VAE
    decoder and a smaller DINOv2 input, and what that does to quality has not been measured.

    Attributes:
        enabled: Turn it on. ``similarity.dino_resolution``, when not given, becomes 224 (`FAST_DINO_RESOLUTION`).
        tiny_vae: Hub id or local directory of a diffusers ``AutoencoderTiny`` that decodes the latents for the loss
            (and the iteration frames). The best image and the generated images are decoded by the full VAE.
            ``None``: the backbone family's (``madebyollin/taesd`` for SD-Turbo, ``taesdxl`` for SDXL-Turbo,
            ``taef1`` for FLUX.1-schnell; Sana has none); the run's config.json records the one used.
    """

    enabled: bool = setting(
        False,
        flag="--fast",
        help="the fast loss: a tiny VAE decoder (TAESD) scores the images and DINOv2 sees 224 px; NOT the paper's "
        "loss, and its effect on quality is not measured (final images still use the full VAE)",
    )
    tiny_vae: str | None = setting(
        None,
        flag="--tiny-vae",
        metavar="ID|DIR",
        help="with --fast: the AutoencoderTiny to use (default: the backbone's)",
    )

    def similarity_for(self, similarity: SimilaritySettings) -> SimilaritySettings:
        """``similarity`` as this loss uses it: DINOv2 at `FAST_DINO_RESOLUTION` when on and no side was given."""
        if not self.enabled or similarity.dino_resolution is not None:
            return similarity
        return dataclasses.replace(similarity, dino_resolution=FAST_DINO_RESOLUTION)


def with_defaults(cls: type[T], defaults: dict, **given) -> T:
    """Settings of type ``cls`` from a backbone family's ``defaults`` (`siso.backbones.Backbone.defaults`), with the
    values ``given`` (command-line flags; ``None`` = not given) taking precedence, and ``cls``'s own defaults after
    both."""
    return cls(**{**defaults, **{name: value for name, value in given.items() if value is not None}})
