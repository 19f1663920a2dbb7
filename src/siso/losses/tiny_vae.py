"""The opt-in fast loss (`siso.config.FastSettings`): the loss path decodes with a tiny VAE.

At 512 px the VAE decode's forward and backward are about half of an iteration's FLOPs. ``AutoencoderTiny``
(TAESD: 1.2M decoder parameters against the full decoder's 50M) decodes the same latents approximately, for the
loss and the iteration frames only; the best image and the generated images go through the full VAE. With DINOv2 at
224 px instead of 518 (set by `SisoConfig` when fast is on) this is a different loss from the paper's: what it does to
quality is not measured here.
"""

from __future__ import annotations

from diffusers import AutoencoderTiny

from siso.backbones import Backbone, family
from siso.config import FastSettings
from siso.hub import ModelLoadError, load_pretrained

__all__ = ["load_tiny_vae", "tiny_vae_name"]


def tiny_vae_name(fast: FastSettings, model: str | type[Backbone] | None) -> str:
    """The tiny VAE the fast loss of ``model`` (a model name, Hub id or directory, or a backbone class) uses.

    Raises:
        ValueError: none given and the family has none (Sana).
    """
    if fast.tiny_vae is not None:
        return fast.tiny_vae
    cls = family(model) if isinstance(model, str) else model
    if cls is None or cls.tiny_vae is None:
        name = cls.__name__ if cls else repr(model)
        raise ValueError(
            f"--fast needs a tiny VAE decoder (a diffusers AutoencoderTiny) and {name} has no known one; "
            "pass one with --tiny-vae ID|DIR"
        )
    return cls.tiny_vae


def load_tiny_vae(name: str, backbone: Backbone) -> AutoencoderTiny:
    """Load ``name`` frozen, on the backbone's device and dtype, checked against the backbone's latents.

    Raises:
        ModelLoadError: it cannot be loaded, or it decodes latents with another number of channels.
    """
    vae = load_pretrained(AutoencoderTiny.from_pretrained, name, "tiny VAE", torch_dtype=backbone.dtype)
    if not isinstance(vae, AutoencoderTiny):
        raise ModelLoadError(f"tiny VAE {name!r} is a {type(vae).__name__}, not an AutoencoderTiny")
    expected = backbone.pipe.vae.config.latent_channels
    if vae.config.latent_channels != expected:
        raise ModelLoadError(
            f"tiny VAE {name!r} decodes {vae.config.latent_channels}-channel latents; "
            f"this backbone's have {expected} (SD and SDXL: 4, e.g. madebyollin/taesd; FLUX: 16, madebyollin/taef1)"
        )
    return vae.to(backbone.device).eval().requires_grad_(False)
