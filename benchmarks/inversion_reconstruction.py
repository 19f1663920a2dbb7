"""Inversion quality on the tiny test models: ReNoise against DDIM inversion, and what each ReNoise part does.

For each tiny backbone (random weights: SD-Turbo layout with Euler, SDXL-Turbo layout with Euler-ancestral, FLUX.1-
schnell and Sana layouts with the rectified-flow Euler sampler) and each inversion setting: invert a random 32 px photo
to strength 0.75 of the family's editing schedule (`EditConfig` with its defaults: 4 steps, Sana 20 with CFG 4.5),
denoise it back with no LoRA, and report the relative latent error ||z_rec - z|| / ||z||, the PSNR of the decoded
reconstruction against the VAE round trip (the inversion's own error) and against the photo (what `metrics.json`
reports; a random VAE caps it), and the denoiser passes. The flow families also get ReNoise at the smallest strength
that leaves one step (strength 0 would redo none: the edit would be the VAE round trip itself, which the settings
refuse). Prints a Markdown table; ``--json FILE`` also writes the figures.

    .venv/bin/python benchmarks/inversion_reconstruction.py [--json FILE] [--seeds 3]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny

from siso.backbones import config_for, load_backbone
from siso.config import EditConfig, InversionSettings
from siso.editing import psnr
from siso.editing.inversion import invert

SETTINGS = {
    "ddim": InversionSettings.preset("ddim"),
    "renoise (default)": InversionSettings(),
    "renoise, no regularisation": InversionSettings(kl_weight=0.0, ac_weight=0.0),
    "renoise, no noise correction": InversionSettings(noise_correction=False),
    "ddim, no noise correction": InversionSettings(
        **{**InversionSettings.preset("ddim").__dict__, "noise_correction": False}
    ),
}
# A flow sampler's velocity is not regularised and its steps add no noise: the other settings are the default's.
FLOW_SETTINGS = ("ddim", "renoise (default)")
FAMILIES = (  # name, builder, whether its sampler is a rectified flow
    ("sd-turbo (Euler)", tiny.make_sd_turbo, False),
    ("sdxl-turbo (Euler-ancestral)", tiny.make_sdxl_turbo, False),
    ("flux-schnell (flow Euler)", tiny.make_flux_schnell, True),
    ("sana (flow Euler, CFG 4.5)", tiny.make_sana, True),
)


def measure(backbone, config: EditConfig, settings: InversionSettings, strength: float, seed: int) -> dict:
    photo = torch.rand(1, 3, backbone.resolution, backbone.resolution, generator=torch.Generator().manual_seed(seed))
    valid = torch.ones(1, 1, *photo.shape[-2:])
    guidance = config.optim.guidance_scale
    cond = backbone.encode_prompt("a photo of a dog", guidance)
    sampler = backbone.edit_sampler(config.optim.num_inference_steps, strength)
    clean = backbone.encode(photo)
    inversion = invert(sampler, clean, cond, settings, torch.Generator().manual_seed(seed), guidance)
    with torch.no_grad():
        latents = inversion.latents.to(backbone.dtype)
        for i in range(len(sampler)):
            latents = sampler.step(sampler.predict(latents, i, cond, guidance), i, latents, inversion.noises[i])
        image, round_trip = backbone.decode(latents), backbone.decode(clean)
    return {
        "latent_error": float((latents - clean).norm() / clean.norm()),
        "psnr_vs_vae": psnr(image, round_trip, valid),
        "psnr_vs_photo": psnr(image, photo, valid),
        "evaluations": inversion.model_evaluations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--seeds", type=int, default=3, help="photos (seeds) averaged per row (3)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, make, flow in FAMILIES:
            path = str(make(Path(tmp) / family.split()[0]))
            backbone = load_backbone(path, "fp32", "cpu", resolution=32)
            config = config_for(EditConfig, path)
            steps = config.optim.num_inference_steps
            cases = [(name, SETTINGS[name], config.edit.strength) for name in (FLOW_SETTINGS if flow else SETTINGS)]
            if flow:
                cases.append((f"renoise (default), 1 step (strength {1 / steps:g})", InversionSettings(), 1 / steps))
            for name, settings, strength in cases:
                runs = [measure(backbone, config, settings, strength, seed) for seed in range(args.seeds)]
                mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
                rows.append({"backbone": family, "inversion": name, "steps": steps, "strength": strength, **mean})
    print("| tiny backbone | inversion | latent error | PSNR vs VAE round trip | PSNR vs photo | denoiser passes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['inversion']} | {r['latent_error']:.3g} | {r['psnr_vs_vae']:.2f} dB "
            f"| {r['psnr_vs_photo']:.2f} dB | {r['evaluations']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
