"""`siso.bench.measure`: the run a configuration times is described as every run is (`bench_spec`), and its loop is
the family's, run for the warm-up and the measured iterations plus a last one, never stopping early; extra steps with
gradient add denoising steps (`optim_settings`)."""

import dataclasses

from siso.backbones import config_for
from siso.bench import BenchSettings
from siso.bench.measure import CONFIGURATIONS, bench_spec, optim_settings
from siso.compose import default_slots
from siso.config import EditConfig, SimilaritySettings, SisoConfig


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


def test_each_configuration_describes_its_run():
    settings = BenchSettings(iters=2, warmup=1, device="cpu")
    similarity = SimilaritySettings()
    one = bench_spec("sd-turbo", settings, CONFIGURATIONS["default"], 1, similarity, "fp32")
    assert (one.kind, one.out, len(one.subjects), one.subjects[0].box, one.composed) == ("learn", None, 1, None, False)
    assert one.config.optim == optim_settings("sd-turbo", settings)
    assert one.config.accel == CONFIGURATIONS["default"].accel
    two = bench_spec("sd-turbo", settings, CONFIGURATIONS["default"], 2, similarity, "fp32")
    assert [s.box for s in two.subjects] == default_slots(2) and two.composed  # side by side, as siso generate
    fast = bench_spec("sd-turbo", settings, CONFIGURATIONS["fast"], 1, similarity, "fp32")
    assert fast.config.fast.enabled and fast.config.similarity.dino_resolution == 224
    edit = bench_spec("sd-turbo", settings, CONFIGURATIONS["edit"], 1, similarity, "fp32")
    assert edit.kind == "edit" and isinstance(edit.config, EditConfig) and edit.job.mask.mean() == 0.25
