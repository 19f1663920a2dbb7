"""`siso.accel.stack.accelerated`: inside the block the backbone runs as the settings say, on the loss's decoder when
given one; after it, even after an error, the stock modules are back and draw the stock image exactly."""

import pytest
import tiny
import torch

from siso.accel.stack import accelerated
from siso.backbones import load_backbone
from siso.config import AccelSettings
from siso.losses.tiny_vae import load_tiny_vae


def _state(*modules: torch.nn.Module) -> list[tuple[str, type, bool]]:
    """Per submodule: its name, its type and whether it carries an instance-level forward."""
    return [(name, type(m), "forward" in vars(m)) for module in modules for name, m in module.named_modules()]


def test_accelerated_changes_the_modules_inside_the_block_only(model_dirs, tmp_path):
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    vae, unet = backbone.pipe.vae, backbone.denoiser
    cond = backbone.encode_prompt("a photo of a dog")

    def sample() -> torch.Tensor:
        return backbone.sample(cond, torch.Generator().manual_seed(0), 1, 1).detach()

    stock_image, stock = sample(), _state(vae, unet)
    with accelerated(backbone, AccelSettings.preset("reference")):
        assert _state(vae, unet) == stock  # the reference code's modules: nothing changed
    with accelerated(backbone, AccelSettings()):  # the default levers: layout, fused upsampling, lean graph
        assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        changed = {kind.__name__ for name, kind, own in _state(vae, unet) if (name, kind, own) not in stock}
        assert {"GroupNormSiLU", "Upsample2D", "ResnetBlock2D"} <= changed  # fused, own forward, own forward
        # How an iteration runs, not what it computes: the same image up to float rounding.
        torch.testing.assert_close(sample(), stock_image, rtol=0, atol=1e-5)
    assert _state(vae, unet) == stock and vae.decoder.conv_in.weight.is_contiguous()
    assert torch.equal(sample(), stock_image)

    tiny_vae = load_tiny_vae(str(tiny.make_tiny_vae(tmp_path / "taesd")), backbone)
    with pytest.raises(RuntimeError, match="stopped"), accelerated(backbone, AccelSettings(), loss_vae=tiny_vae):
        assert backbone.pipe.vae is tiny_vae  # the loss's decoder, in the channels-last layout
        assert tiny_vae.decoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
        raise RuntimeError("stopped")
    assert backbone.pipe.vae is vae and _state(vae, unet) == stock
    assert tiny_vae.decoder.layers[0].weight.is_contiguous()
    assert torch.equal(sample(), stock_image)
