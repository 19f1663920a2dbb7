"""`siso.bench.measure.optim_settings`: the loop a configuration times is the family's, run for the warm-up and the
measured iterations plus a last one, never stopping early; extra steps with gradient add denoising steps."""

import dataclasses

from siso.backbones import config_for
from siso.bench import BenchSettings
from siso.bench.measure import optim_settings
from siso.config import EditConfig, SisoConfig


def test_the_family_loop_runs_every_iteration_and_grad_steps_add_steps():
    settings = BenchSettings(iters=2, warmup=1, device="cpu")
    sd = optim_settings("sd-turbo", settings)
    # warm-up + measured + the last (no optimizer step), with a patience no run of that length reaches
    assert (sd.max_iters, sd.patience, sd.min_improvement) == (4, 5, 0.0)
    family = config_for(SisoConfig, "sd-turbo").optim
    assert sd == dataclasses.replace(family, max_iters=4, patience=5, min_improvement=0.0)
    sana = optim_settings("sana", settings)
    assert (sana.lr, sana.num_inference_steps, sana.grad_steps, sana.guidance_scale) == (8e-4, 20, 3, 4.5)
    # SD-Turbo denoises in one step: three steps with gradient make three steps.
    deeper = optim_settings("sd-turbo", dataclasses.replace(settings, grad_steps=3))
    assert (deeper.num_inference_steps, deeper.grad_steps) == (3, 3)
    # Editing keeps its own schedule (4 steps that the strength cuts), whatever the steps with gradient.
    edit = optim_settings("sd-turbo", dataclasses.replace(settings, grad_steps=3), edit=True)
    assert (edit.num_inference_steps, edit.grad_steps) == (EditConfig().optim.num_inference_steps, 3) == (4, 3)
