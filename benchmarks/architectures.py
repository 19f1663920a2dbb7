"""The published architectures of each backbone's models, built from their configs (no weights are downloaded).

Each config below is the one in the model's Hub repository (``<repo>/<component>/config.json``), written out here
because this machine cannot reach the Hub. Build on the ``meta`` device to count parameters at no memory cost, or on
a real device to measure speed and memory with random weights (compute does not depend on the values).

    .venv/bin/python benchmarks/architectures.py          # parameter counts per component
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderDC, AutoencoderKL, FluxTransformer2DModel, SanaTransformer2DModel, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    T5Config,
    T5EncoderModel,
)

# openai/clip-vit-large-patch14's text tower (FLUX.1 text_encoder, SDXL text_encoder)
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
# OpenCLIP ViT-H/14 text tower (SD 2.x / sd-turbo text_encoder)
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
              "projection_dim": 512, "hidden_act": "gelu"}  # fmt: skip
# OpenCLIP ViT-bigG/14 text tower (SDXL text_encoder_2)
OPENCLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                 "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip
# SD / SDXL VAE; FLUX's has 16 latent channels and no quant convs
SD_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
          "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}  # fmt: skip


def _clip(config: dict, projection: bool = False) -> torch.nn.Module:
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config))


def sd_turbo() -> dict[str, torch.nn.Module]:
    """stabilityai/sd-turbo (the SD 2.1 architecture)."""
    return {
        "unet": UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            block_out_channels=(320, 640, 1280, 1280),
        ),
        "vae": AutoencoderKL(**SD_VAE),
        "text_encoder": _clip(OPENCLIP_H),
    }


def sdxl_turbo() -> dict[str, torch.nn.Module]:
    """stabilityai/sdxl-turbo (the SDXL 1.0 architecture)."""
    return {
        "unet": UNet2DConditionModel(
            sample_size=64,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        "vae": AutoencoderKL(**SD_VAE),
        "text_encoder": _clip(CLIP_L),
        "text_encoder_2": _clip(OPENCLIP_BIGG, projection=True),
    }


def flux_schnell() -> dict[str, torch.nn.Module]:
    """black-forest-labs/FLUX.1-schnell."""
    t5_xxl = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    )
    return {
        "transformer": FluxTransformer2DModel(  # diffusers' defaults are FLUX.1's
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=False,
        ),
        "vae": AutoencoderKL(
            **{**SD_VAE, "latent_channels": 16},
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        ),
        "text_encoder": _clip(CLIP_L),
        "text_encoder_2": T5EncoderModel(t5_xxl),
    }


def sana() -> dict[str, torch.nn.Module]:
    """Efficient-Large-Model/Sana_1600M_512px_diffusers (DC-AE f32c32, Gemma-2-2B-it)."""
    stages = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    gemma_2b = Gemma2Config(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
    )
    return {
        "transformer": SanaTransformer2DModel(
            in_channels=32,
            out_channels=32,
            num_attention_heads=70,
            attention_head_dim=32,
            num_layers=20,
            num_cross_attention_heads=20,
            cross_attention_head_dim=112,
            cross_attention_dim=2240,
            caption_channels=2304,
            mlp_ratio=2.5,
            sample_size=16,
        ),
        "vae": AutoencoderDC(
            encoder_block_types=stages,
            decoder_block_types=stages,
            encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
            decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
            scaling_factor=0.41407,
        ),
        "text_encoder": Gemma2Model(gemma_2b),
    }


ARCHITECTURES = {"sd-turbo": sd_turbo, "sdxl-turbo": sdxl_turbo, "flux-schnell": flux_schnell, "sana": sana}
DENOISERS = {"sd-turbo": "unet", "sdxl-turbo": "unet", "flux-schnell": "transformer", "sana": "transformer"}


def build(name: str, device: str | torch.device = "meta") -> dict[str, torch.nn.Module]:
    """The components of backbone ``name`` with random weights (fp32) on ``device``."""
    with torch.device(device):
        return ARCHITECTURES[name]()


def parameter_counts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, int]]:
    """Per component: parameters in linear layers' weights (what --quantize converts) and all the others."""
    counts = {}
    for name, module in modules.items():
        total = sum(p.numel() for p in module.parameters())
        linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))
        counts[name] = {"linear": linear, "other": total - linear}
    return counts


if __name__ == "__main__":
    for backbone in ARCHITECTURES:
        counts = parameter_counts(build(backbone))
        print(backbone, {k: f"{(v['linear'] + v['other']) / 1e6:.0f}M" for k, v in counts.items()})


def similarity_networks() -> dict[str, torch.nn.Module]:
    """The loss's networks: facebook/dinov2-large and the vision tower of laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    dino = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518, patch_size=14)
    clip = CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
        patch_size=14, projection_dim=1024, hidden_act="gelu",
    )  # fmt: skip
    return {"dino": Dinov2Model(dino), "ir": CLIPVisionModelWithProjection(clip)}
