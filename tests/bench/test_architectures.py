"""`siso.bench.architectures`: the shipped configs are the published architectures (built on the meta device;
the real-size models are too large for the test machine)."""

import pytest
import torch

from siso.bench.architectures import MODELS, build_backbone, build_similarity, published_config

# Published parameter counts (model cards and papers), in millions, that the shipped configs must reproduce.
PARAMETERS = {
    "sd-turbo": {"unet": 866, "vae": 84, "text_encoder": 340},
    "sdxl-turbo": {"unet": 2567, "vae": 84, "text_encoder": 123, "text_encoder_2": 695},
    "flux-schnell": {"transformer": 11891, "vae": 84, "text_encoder": 123, "text_encoder_2": 4762},
    "sana": {"transformer": 1604, "vae": 353, "text_encoder": 2614},
}


@pytest.mark.parametrize("model", MODELS)
def test_shipped_configs_are_the_published_architectures(model):
    backbone = build_backbone(model, "meta", torch.bfloat16)
    for name, millions in PARAMETERS[model].items():
        count = sum(p.numel() for p in getattr(backbone.pipe, name).parameters())
        assert round(count / 1e6) == millions, name
    assert backbone.dtype == torch.bfloat16 and backbone.resolution == 512
    assert set(published_config(model)["components"]) == set(PARAMETERS[model])
    cond = backbone.encode_prompt("a photo of a dog", 4.5)  # the stand-in tokenizers pad as the real ones
    lengths = {"sd-turbo": 77, "sdxl-turbo": 77, "flux-schnell": 256, "sana": 256}
    assert cond["prompt_embeds"].shape[1] == lengths[model]


def test_similarity_networks_are_dinov2_large_and_clip_vit_h():
    nets = build_similarity("meta", torch.float32)
    assert {k: round(sum(p.numel() for p in v.parameters()) / 1e6) for k, v in nets.items()} == {"dino": 304, "ir": 632}
