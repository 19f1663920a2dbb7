"""Editing (subject swap in a given photo, paper Sec. 3.4): the scene, the background loss and the edit loop.

The photo is inverted once (`siso.inversion`), with the LoRA at identity. Each iteration of the SISO loop
(`siso.optimize.optimize_lora`) then denoises the fixed inverted latent with the fixed per-step noise and minimises
``L_sim + c * L_bg``: the similarity to the subject photo, plus the pixel MSE outside the object mask against the
input (the reference code's target) or the inversion's reconstruction (the paper's Eq. 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from siso.backbones import Backbone, default_device
from siso.config import EditConfig
from siso.images import pil_to_tensor, tensor_to_pil
from siso.inversion import invert
from siso.losses import SimilarityLoss
from siso.masks import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, MaskError, ObjectSegmenter, dilate
from siso.optimize import IterationCallback, SisoResult, optimize_lora
from siso.upsample import fused_upsampling


@dataclass
class Scene:
    """The photo to edit at model resolution.

    A non-square photo is resized so its long side is the model resolution and padded (edge pixels repeated) to a
    square; results are cropped back to ``box``, so the whole photo is kept.

    Attributes:
        image: (1, 3, R, R) the padded photo in [0, 1].
        mask: (1, 1, R, R) 1 on the object to replace (dilated), 0 elsewhere.
        valid: (1, 1, R, R) 1 on the photo's pixels, 0 on the padding.
        box: (left, top, right, bottom) of the photo's pixels in the square.
    """

    image: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor
    box: tuple[int, int, int, int]

    @property
    def background(self) -> torch.Tensor:
        """(1, 1, R, R) weights of the background term: the photo's pixels outside the mask."""
        return self.valid * (1 - self.mask)

    def crop(self, image: Image.Image) -> Image.Image:
        """A square model-resolution image cropped to the photo's pixels."""
        return image.crop(self.box)

    @property
    def input_image(self) -> Image.Image:
        """The photo as the model sees it (resized, not padded)."""
        return self.crop(tensor_to_pil(self.image)[0])

    @property
    def mask_image(self) -> Image.Image:
        """The object mask (white = object) at the size of `input_image`."""
        return self.crop(Image.fromarray((self.mask[0, 0].cpu().numpy() * 255).astype(np.uint8)))


def prepare_scene(photo: Image.Image, mask: np.ndarray, resolution: int, dilation: int = 0) -> Scene:
    """Resize (long side to ``resolution``) and pad the photo and its object mask; dilate the mask.

    Args:
        photo: The RGB photo to edit.
        mask: (H, W) boolean object mask in the photo's pixels.
        resolution: The backbone's image side.
        dilation: Pixels (at model resolution) to grow the mask by.

    Raises:
        MaskError: the mask covers no pixel once resized (too small for this resolution), or covers the whole photo.
    """
    if mask.shape != (photo.height, photo.width):
        raise MaskError(f"mask is {mask.shape[1]}x{mask.shape[0]} px but the photo is {photo.width}x{photo.height}")
    scale = resolution / max(photo.size)
    width, height = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    left, top = (resolution - width) // 2, (resolution - height) // 2
    pad = (left, resolution - width - left, top, resolution - height - top)
    image = pil_to_tensor(photo.resize((width, height), Image.Resampling.LANCZOS))
    image = F.pad(image, pad, mode="replicate")
    # Area-average the mask, then threshold: a pixel is object when at least half of what it covers is.
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BOX)
    small = np.asarray(small) >= 128
    if not small.any():
        raise MaskError(
            f"the object mask covers no pixel once the photo is resized to {width}x{height}: draw a larger "
            "mask or box, or use a larger --resolution"
        )
    small = dilate(small, dilation)
    if small.all():
        raise MaskError("the object mask covers the whole photo: nothing is left as background to keep")
    as_tensor = torch.from_numpy(small.astype(np.float32))[None, None]
    valid = F.pad(torch.ones(1, 1, height, width), pad)
    return Scene(image, F.pad(as_tensor, pad), valid, (left, top, left + width, top + height))


class BackgroundLoss(torch.nn.Module):
    """Mean squared error in [0, 1] pixels over the background (paper Eq. 3): zero gradient inside the mask."""

    def __init__(self, target: torch.Tensor, weights: torch.Tensor):
        """Args:
        target: (1, 3, R, R) the pixels to keep.
        weights: (1, 1, R, R) 1 on the background, 0 on the object and padding.
        """
        super().__init__()
        self.register_buffer("target", target)
        self.register_buffer("weights", weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) images -> (B,) background MSE."""
        squared = (images - self.target).square() * self.weights
        return squared.sum(dim=(1, 2, 3)) / (self.weights.sum() * images.shape[1])


def psnr(image: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor) -> float:
    """PSNR in dB of [0, 1] images over the pixels where ``weights`` is 1."""
    mse = float(BackgroundLoss(reference, weights)(image).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def composite(edited: Image.Image, original: Image.Image, mask: Image.Image, feather: int) -> Image.Image:
    """Paste ``original`` back outside ``mask``, blending over ``feather`` pixels *inside* the mask, so that every
    pixel outside the mask is exactly the original's.

    Args:
        edited, original: RGB images of one size.
        mask: L image of that size, white = object.
        feather: Blend width in pixels (0: a hard edge).
    """
    alpha = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    if feather:
        # An opening (erode, then blur by the same radius) never reaches outside the mask.
        size = 2 * feather + 1
        eroded = -F.max_pool2d(-alpha, size, stride=1, padding=feather)
        alpha = F.avg_pool2d(F.pad(eroded, (feather,) * 4, mode="replicate"), size, stride=1)
        alpha = alpha * (np.asarray(mask)[None, None] > 127)
    a = alpha[0, 0, :, :, None].numpy()
    blended = np.asarray(edited, dtype=np.float32) * a + np.asarray(original, dtype=np.float32) * (1 - a)
    return Image.fromarray(np.round(blended).astype(np.uint8))


@dataclass
class EditResult(SisoResult):
    """`SisoResult` of an edit, with the inversion's reconstruction.

    Attributes:
        reconstruction: The inverted photo denoised with the LoRA at identity (cropped like ``best_image``).
        inversion_psnr: PSNR (dB) of ``reconstruction`` against the input, over the photo's pixels.
        inversion_evaluations: Denoiser passes the inversion took.
        best_background_mse: Background MSE (outside the mask, against the input) of ``best_image``.
    """

    reconstruction: Image.Image | None = None
    inversion_psnr: float = math.nan
    inversion_evaluations: int = 0
    best_background_mse: float = math.nan

    def record(self) -> dict:
        return {
            **super().record(),
            "inversion": {"psnr": self.inversion_psnr, "model_evaluations": self.inversion_evaluations},
            "best_background_mse": self.best_background_mse,
        }


def edit_subject(
    backbone: Backbone,
    scene: Scene,
    subject: Image.Image,
    config: EditConfig,
    callback: IterationCallback | None = None,
    loss_fn: SimilarityLoss | None = None,
    progress: bool = True,
) -> EditResult:
    """Put ``subject`` in place of the masked object of ``scene``: invert once, then run the SISO loop.

    Args:
        backbone: A frozen backbone without LoRA that supports editing (`Backbone.edit_sampler`).
        scene: The photo and mask (`prepare_scene`) at ``backbone.resolution``.
        subject: The subject photo.
        config: ``train_prompt`` is the edit prompt ("a photo of a dog").
        callback: Called after every iteration with (iteration, image cropped to the photo, loss terms).
        loss_fn: A prebuilt `SimilarityLoss` (built from ``config.similarity`` when omitted).
        progress: Show progress bars.

    Returns:
        The best edit (cropped to the photo) and its LoRA, the history (terms ``dino``, ``ir``, ``similarity``,
        ``background``, ``loss``), and the inversion's reconstruction and PSNR. The backbone carries the best LoRA.
    """
    opt, edit = config.optim, config.edit
    if scene.image.shape[-1] != backbone.resolution:
        raise ValueError(f"scene is {scene.image.shape[-1]} px but the backbone works at {backbone.resolution} px")
    loss_fn = loss_fn or SimilarityLoss(config.similarity, subject, backbone.device, backbone.dtype)
    sampler = backbone.edit_sampler(opt.num_inference_steps, edit.strength)
    image, valid = scene.image.to(backbone.device), scene.valid.to(backbone.device)
    with torch.no_grad():
        cond = backbone.encode_prompt(config.train_prompt, opt.guidance_scale)
        generator = torch.Generator().manual_seed(opt.seed)
        inversion = invert(
            sampler, backbone.encode(image), cond, config.inversion, generator, opt.guidance_scale, progress
        )
        # Denoised and decoded as the loop does (layout, upsampling), so L_bg is exactly 0 at identity.
        with backbone.channels_last_vae(), fused_upsampling(backbone.pipe.vae, backbone.denoiser):
            reconstruction = backbone.denoise(sampler, inversion.latents, inversion.noises, cond, 0, opt.guidance_scale)
    weights = scene.background.to(backbone.device)
    background = BackgroundLoss(reconstruction if edit.bg_target == "reconstruction" else image, weights)

    def render(cond: dict) -> torch.Tensor:
        return backbone.denoise(sampler, inversion.latents, inversion.noises, cond, opt.grad_steps, opt.guidance_scale)

    def objective(images: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = loss_fn(images)
        terms["similarity"] = terms.pop("loss")
        terms["background"] = background(images)
        terms["loss"] = terms["similarity"] + edit.bg_weight * terms["background"].mean()
        return terms

    def on_iteration(iteration: int, pil: Image.Image, terms: dict) -> bool | None:
        return callback(iteration, scene.crop(pil), terms) if callback else None

    result = optimize_lora(backbone, render, objective, config, on_iteration, progress)
    best = pil_to_tensor(result.best_image).to(backbone.device)
    return EditResult(
        best_image=scene.crop(result.best_image),
        best_iteration=result.best_iteration,
        best_loss=result.best_loss,
        best_lora=result.best_lora,
        history=result.history,
        stop_reason=result.stop_reason,
        reconstruction=scene.crop(tensor_to_pil(reconstruction)[0]),
        inversion_psnr=psnr(reconstruction, image, valid),
        inversion_evaluations=inversion.model_evaluations,
        best_background_mse=float(BackgroundLoss(image, weights)(best).mean()),
    )


@dataclass
class EditJob:
    """What to edit: the scene photo, and where the object mask comes from.

    Attributes:
        scene: The photo to edit (RGB).
        mask: The object mask in the scene's pixels (from ``--mask`` or ``--box``), or None to detect ``object_name``
            with Grounding DINO and segment it with SAM.
        mask_source: How ``mask`` was made, for config.json (``file PATH``, ``box x0,y0,x1,y1``, ``detected``).
        object_name: The object to detect (default: the subject class).
        subject_class: The subject's class, for the default prompt "a photo of a {class}" (inferred from the subject
            photo when None and the prompt is not given).
        prompt: The edit prompt (default "a photo of a {subject class}").
        detector, segmenter: Grounding DINO and SAM models for detection and class inference.
        box_threshold: Minimum detection score (the paper's 0.3).
    """

    scene: Image.Image
    mask: np.ndarray | None = None
    mask_source: str = "detected"
    object_name: str | None = None
    subject_class: str | None = None
    prompt: str | None = None
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    box_threshold: float = 0.3

    def __post_init__(self):
        for name in ("object_name", "subject_class", "prompt"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name.replace('_name', '').replace('_', ' ')} must not be empty")


def resolve_edit(job: EditJob, subject: Image.Image, device: str | None) -> tuple[np.ndarray, str, dict]:
    """The object mask, the edit prompt and the names used, detecting and naming objects where the job says to.

    Raises:
        MaskError: nothing detected, or the subject's class could not be inferred.
    """
    names = {"object": job.object_name, "subject_class": job.subject_class}
    need_class = job.subject_class is None and (job.prompt is None or (job.mask is None and job.object_name is None))
    mask = job.mask
    if mask is not None and not need_class:
        return mask, job.prompt or f"a photo of a {job.subject_class}", names
    segmenter = ObjectSegmenter(job.detector, job.segmenter, device or default_device(), job.box_threshold)
    if need_class:
        names["subject_class"] = segmenter.name_object(subject)
        if names["subject_class"] is None:
            raise MaskError(
                "could not tell what the subject is; pass --subject-class NAME (e.g. dog), and --object NAME for "
                "the object to replace if it differs"
            )
    if mask is None:
        names["object"] = job.object_name or names["subject_class"]
        mask = segmenter.segment(job.scene, names["object"])
        if mask is None or not mask.any():
            raise MaskError(
                f"no {names['object']!r} was detected in the photo to edit; name it with --object NAME, or give "
                "--box x0,y0,x1,y1 or --mask PNG"
            )
    return mask, job.prompt or f"a photo of a {names['subject_class']}", names
