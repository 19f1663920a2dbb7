"""Editing (subject swap in a given photo, paper Sec. 3.4): the background loss and the edit loop.

The photo is inverted once (`siso.editing.inversion`), with the LoRA at identity. Each iteration of the SISO loop
(`siso.optimize.optimize_lora`) then denoises the fixed inverted latent with the fixed per-step noise and minimises
``L_sim + c * L_bg`` (`EditObjective`): the similarity to the subject photo, plus the pixel MSE outside the object
mask against the input (the reference code's target) or the inversion's reconstruction (the paper's Eq. 3).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from PIL import Image

from siso.accel import accelerated
from siso.backbones import Backbone, EditSampler
from siso.config import EditConfig
from siso.editing.inversion import Inversion, invert
from siso.editing.scene import Scene
from siso.images import pil_to_tensor, tensor_to_pil
from siso.losses.networks import LossNetworks
from siso.optimize import IterationCallback, Objective, SisoResult, optimize_lora


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
        """(B, 3, R, R) images -> (B,) background MSE; 0 when there is no background (a refine of the whole image)."""
        squared = (images - self.target).square() * self.weights
        return squared.sum(dim=(1, 2, 3)) / (self.weights.sum().clamp(min=1) * images.shape[1])


def psnr(image: torch.Tensor, reference: torch.Tensor, weights: torch.Tensor) -> float:
    """PSNR in dB of [0, 1] images over the pixels where ``weights`` is 1."""
    mse = float(BackgroundLoss(reference, weights)(image).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


class EditObjective(torch.nn.Module):
    """``L_sim + c * L_bg`` (paper Eq. 3), with the similarity loss's terms renamed: ``dino``, ``ir``, ``similarity``
    (their weighted sum), ``background`` and ``loss``; a refine adds ``c_struct * L_struct`` (``structure``).

    Args:
        similarity: The similarity loss, set to the subject (or `siso.losses.CompositionLoss`, set to several).
        background: The background term.
        bg_weight: c.
        structure: A refine's structure term (`siso.losses.structure.StructureLoss`); ``None``: none.
        structure_weight: c_struct.
    """

    def __init__(
        self,
        similarity: Objective,
        background: BackgroundLoss,
        bg_weight: float,
        structure: torch.nn.Module | None = None,
        structure_weight: float = 0.0,
    ):
        super().__init__()
        self.similarity, self.background, self.bg_weight = similarity, background, bg_weight
        self.structure, self.structure_weight = structure, structure_weight

    @property
    def nets(self) -> torch.nn.ModuleDict:
        """The similarity networks (compiled with ``--compile``)."""
        return self.similarity.nets

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, R, R) images -> the loss terms (each (B,), ``loss`` a scalar)."""
        terms = self.similarity(images)
        terms["similarity"] = terms.pop("loss")
        terms["background"] = self.background(images)
        terms["loss"] = terms["similarity"] + self.bg_weight * terms["background"].mean()
        if self.structure is not None:
            terms["structure"] = self.structure(images)
            terms["loss"] = terms["loss"] + self.structure_weight * terms["structure"].mean()
        return terms


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


@dataclass
class InvertedScene:
    """A scene photo inverted once (with the LoRA at identity), ready for the edit loop.

    Attributes:
        backbone: The backbone it was inverted with (and is denoised with).
        sampler: The edit sampler (the last ``int(steps * strength)`` steps of the schedule).
        inversion: The inverted latent and per-step noises.
        image: (1, 3, R, R) the photo on the backbone's device.
        reconstruction: (1, 3, R, R) the inverted latent denoised with no LoRA, decoded as the loop decodes.
        guidance_scale: The guidance the inversion used, and the denoising uses.
    """

    backbone: Backbone
    sampler: EditSampler
    inversion: Inversion
    image: torch.Tensor
    reconstruction: torch.Tensor
    guidance_scale: float

    def render(self, cond: dict, grad_steps: int) -> torch.Tensor:
        """Denoise the inverted latent with text conditioning ``cond``, the last ``grad_steps`` steps with
        gradients -> (1, 3, R, R) in [0, 1]."""
        latents, noises = self.inversion.latents, self.inversion.noises
        return self.backbone.denoise(self.sampler, latents, noises, cond, grad_steps, self.guidance_scale)


def invert_scene(backbone: Backbone, scene: Scene, config: EditConfig, progress: bool = True) -> InvertedScene:
    """Invert the photo of ``scene`` to the noisiest level of the edit (``config.inversion``) and reconstruct it.

    Args:
        backbone: A frozen backbone without LoRA that supports editing (`Backbone.edit_sampler`).
        scene: The photo and mask (`siso.editing.scene.prepare_scene`) at ``backbone.resolution``.
        config: ``train_prompt`` (the edit prompt), ``optim`` (steps, guidance, seed), ``edit.strength``,
            ``inversion`` and ``accel`` (the reconstruction is decoded as the loop's iterations run) are used.
        progress: Show a progress bar over the inversion's steps.

    Raises:
        ValueError: the scene is not at the backbone's resolution.
        FloatingPointError: the inversion diverged.
    """
    opt = config.optim
    if scene.image.shape[-1] != backbone.resolution:
        raise ValueError(f"scene is {scene.image.shape[-1]} px but the backbone works at {backbone.resolution} px")
    sampler = backbone.edit_sampler(opt.num_inference_steps, config.edit.strength)
    image = scene.image.to(backbone.device)
    with torch.no_grad():
        cond = backbone.encode_prompt(config.train_prompt, opt.guidance_scale)
        generator = torch.Generator().manual_seed(opt.seed)
        inversion = invert(
            sampler, backbone.encode(image), cond, config.inversion, generator, opt.guidance_scale, progress
        )
        inverted = InvertedScene(backbone, sampler, inversion, image, image, opt.guidance_scale)
        # Denoised and decoded as the loop's iterations run (layout, upsampling), so L_bg is exactly 0 at identity;
        # compiling would only add a graph for this one call.
        with accelerated(backbone, dataclasses.replace(config.accel, compile=False)):
            inverted.reconstruction = inverted.render(cond, 0)
    return inverted


def edit_objective(
    inverted: InvertedScene,
    scene: Scene,
    config: EditConfig,
    loss_fn: Objective,
    structure: tuple[torch.nn.Module, float] | None = None,
) -> EditObjective:
    """What an edit (or a refine) of ``scene`` minimises: ``loss_fn`` plus the background term against the input or
    the inversion's reconstruction (``config.edit.bg_target``), and a refine's structure term and its weight."""
    target = inverted.reconstruction if config.edit.bg_target == "reconstruction" else inverted.image
    background = BackgroundLoss(target, scene.background.to(inverted.image.device))
    return EditObjective(loss_fn, background, config.edit.bg_weight, *(structure or ()))


def edit_subject(
    backbone: Backbone,
    scene: Scene,
    subject: Image.Image,
    config: EditConfig,
    callback: IterationCallback | None = None,
    loss_fn: Objective | None = None,
    progress: bool = True,
    inverted: InvertedScene | None = None,
    structure: tuple[torch.nn.Module, float] | None = None,
) -> EditResult:
    """Put ``subject`` in place of the masked object of ``scene``: invert once, then run the SISO loop.

    Args:
        backbone: A frozen backbone without LoRA that supports editing (`Backbone.edit_sampler`).
        scene: The photo and mask (`siso.editing.scene.prepare_scene`) at ``backbone.resolution``.
        subject: The subject photo.
        config: ``train_prompt`` is the edit prompt ("a photo of a dog").
        callback: Called after every iteration with (iteration, image cropped to the photo, loss terms).
        loss_fn: A prebuilt `SimilarityLoss` (loaded from ``config.similarity`` when omitted), or the
            `siso.losses.CompositionLoss` of several subjects (``subject`` is then unused).
        progress: Show progress bars.
        inverted: ``scene`` already inverted (`invert_scene`); inverted here when omitted.
        structure: A refine's structure term and its weight (`EditObjective`); ``None``: none.

    Returns:
        The best edit (cropped to the photo) and its LoRA, the history (terms ``dino``, ``ir``, ``similarity``,
        ``background``, ``loss``), and the inversion's reconstruction and PSNR. The backbone carries the best LoRA.
    """
    inverted = inverted or invert_scene(backbone, scene, config, progress)
    if loss_fn is None:
        loss_fn = LossNetworks(config.similarity, backbone.device, backbone.dtype).loss([subject])
    image, reconstruction = inverted.image, inverted.reconstruction
    weights, valid = scene.background.to(backbone.device), scene.valid.to(backbone.device)
    objective = edit_objective(inverted, scene, config, loss_fn, structure)

    def render(cond: dict) -> torch.Tensor:
        return inverted.render(cond, config.optim.grad_steps)

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
        inversion_evaluations=inverted.inversion.model_evaluations,
        best_background_mse=float(BackgroundLoss(image, weights)(best).mean()),
    )
