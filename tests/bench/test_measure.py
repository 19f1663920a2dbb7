"""`siso.bench.measure`: the run a configuration times is described as every run is (`bench_spec`), and its loop is
the family's, run for the warm-up and the measured iterations plus a last one, never stopping early; extra steps with
gradient add denoising steps (`optim_settings`); an edit and a refine take editing's."""

import dataclasses

from siso.backbones import config_for
from siso.bench import BenchSettings
from siso.bench.measure import CONFIGURATIONS, bench_spec, optim_settings
from siso.compose import default_slots
from siso.config import EditConfig, RefineConfig, SimilaritySettings, SisoConfig


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
    edit = optim_settings("sd-turbo", dataclasses.replace(settings, grad_steps=3), "edit")
    assert (edit.num_inference_steps, edit.grad_steps) == (EditConfig().optim.num_inference_steps, 3) == (4, 3)
    assert optim_settings("sd-turbo", dataclasses.replace(settings, grad_steps=3), "refine") == edit


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
    # A refine of the same image at the model's resolution: one dog in the box of the middle half, the refine's
    # defaults (strength 0.5, the structure term on), as `siso refine --box` describes it.
    refine = bench_spec("sd-turbo", settings, CONFIGURATIONS["refine"], 1, similarity, "fp32")
    assert refine.kind == "refine" and refine.config == config_for(
        RefineConfig, "sd-turbo", train_prompt="a photo of a dog", dtype="fp32", similarity=similarity,
        optim=optim_settings("sd-turbo", settings, "refine"), accel=CONFIGURATIONS["refine"].accel,
    )  # fmt: skip
    assert (refine.config.edit.strength, refine.config.refine.structure_weight) == (0.5, 10.0)
    [subject] = refine.subjects
    assert subject.class_name == "dog" and subject.region.mean() == 0.25 and refine.composed
    assert refine.job.image.size == (512, 512) and list(refine.job.sources) == ["box 128,128,384,384"]
