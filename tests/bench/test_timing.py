"""`siso.bench.timing`: the FLOP count of an iteration."""

import pytest
import torch


@pytest.mark.parametrize("offload", [True, False])
def test_flop_count_leaves_the_text_encoders_as_the_loop_does(model_dirs, subject, make_config, offload):
    # Counting encodes the prompt; with offloading the encoders go out again before the iteration is counted (at real
    # size SDXL-Turbo's 2.8 GB of text encoders on top of the iteration did not fit in 24 GB).
    from siso.backbones import load_backbone
    from siso.bench.timing import count_flops
    from siso.lora import add_lora
    from siso.losses import SimilarityLoss

    config = make_config("sd", max_iters=1)
    config.memory.offload_text_encoders = offload
    backbone = load_backbone(str(model_dirs["sd"]), device="cpu")
    add_lora(backbone, config.lora)
    backbone.park_text_encoders()  # as the loop leaves them
    loss_fn = SimilarityLoss.from_pretrained(config.similarity, subject, backbone.device, backbone.dtype)
    opt = config.optim

    def render(cond):
        return backbone.sample(cond, torch.Generator().manual_seed(0), opt.num_inference_steps, opt.grad_steps)

    assert count_flops(backbone, render, loss_fn, config, encode=True) > 0
    assert (backbone.pipe.text_encoder is None) == offload
