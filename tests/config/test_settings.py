"""Configs refuse bad values, non-finite ones included (``nan <= 0`` is False: a plain range check lets NaN in)."""

import math

import pytest
import torch

from siso.config import SEED_MAX, SEED_MIN, LoraSettings, OptimSettings, SimilaritySettings, SisoConfig, check_seed

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("cls", "field", "message"),
    [
        (OptimSettings, "lr", "lr must be a finite number > 0"),
        (OptimSettings, "min_improvement", "min_improvement is a fraction in"),
        (OptimSettings, "weight_decay", "weight_decay must be a finite number >= 0"),
        (OptimSettings, "grad_clip", "grad_clip must be a finite number > 0"),
        (OptimSettings, "guidance_scale", "guidance_scale must be a finite number >= 0"),
        (LoraSettings, "alpha", "LoRA alpha must be a finite number > 0"),
        (LoraSettings, "text_encoder_lr", "text_encoder_lr must be a finite number > 0"),
        (SimilaritySettings, "dino_weight", "loss weights must be finite numbers >= 0"),
        (SimilaritySettings, "ir_weight", "loss weights must be finite numbers >= 0"),
    ],
)
def test_non_finite_numbers_are_refused(cls, field, message, value):
    with pytest.raises(ValueError, match=message):
        cls(**{field: value})


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (OptimSettings, {"lr": 0.0}, "lr must be a finite number > 0"),
        (OptimSettings, {"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
        (OptimSettings, {"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0"),
        (LoraSettings, {"rank": 0}, "rank must be >= 1"),
        (SimilaritySettings, {"ir_weight": -1.0}, "loss weights must be finite numbers >= 0"),
        (SisoConfig, {"resolution": 100}, "positive multiple of 8"),
    ],
)
def test_out_of_range_values_are_refused(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_seed_range_is_what_torch_accepts():
    for seed in (SEED_MIN, -1, 0, SEED_MAX):
        torch.Generator().manual_seed(seed)
        check_seed(seed)
        OptimSettings(seed=seed)
    for seed in (SEED_MIN - 1, SEED_MAX + 1):
        with pytest.raises(ValueError, match="Overflow"):
            torch.Generator().manual_seed(seed)
        with pytest.raises(ValueError, match="seed must be between"):
            OptimSettings(seed=seed)


def test_for_model_applies_the_family_defaults_then_the_callers_values(model_dirs):
    from siso.config import AccelSettings, EditConfig, MemorySettings

    assert SisoConfig.for_model("flux-schnell").optim.lr == 2e-4  # the family's (the reference code's)
    assert SisoConfig(model="flux-schnell").optim.lr == OptimSettings.lr  # the plain constructor takes none
    sana = SisoConfig.for_model("sana", optim={"lr": 1e-3, "max_iters": None}, lora={"rank": 8})
    assert (sana.optim.lr, sana.optim.num_inference_steps, sana.optim.max_iters) == (1e-3, 20, OptimSettings.max_iters)
    assert sana.lora.rank == 8 and sana.model == "sana"
    memory = MemorySettings(gradient_checkpointing=True)
    config = SisoConfig.for_model(str(model_dirs["sd"]), memory=memory, resolution=None, train_prompt="a dog")
    assert config.memory is memory and config.resolution is None and config.train_prompt == "a dog"
    assert SisoConfig.for_model("sd-turbo", accel={"compile": True}).accel == AccelSettings(compile=True)
    # Editing keeps its own schedule (4 steps that the strength cuts), over the family's generation steps.
    assert EditConfig.for_model("sd-turbo").optim.num_inference_steps == 4
    assert EditConfig.for_model("sd-turbo", optim={"num_inference_steps": 8}).optim.num_inference_steps == 8
    assert SisoConfig.for_model("not-a-model").optim == OptimSettings()  # resolved (and refused) when it loads
    with pytest.raises(TypeError, match="SisoConfig has no field optimizer"):
        SisoConfig.for_model("sd-turbo", optimizer={})
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        SisoConfig.for_model("sd-turbo", optim={"lr": -1.0})


def test_a_config_json_from_before_the_acceleration_settings_still_loads(tmp_path):
    from siso.config import AccelSettings

    data = SisoConfig().to_dict()
    assert data["accel"] == {"channels_last_vae": True, "lean_graph": True, "fuse_upsampling": True, "compile": False}
    del data["accel"]
    data["compile"] = True
    assert SisoConfig.from_dict(data).accel == AccelSettings(compile=True)
    SisoConfig(train_prompt="a dog").save(tmp_path / "config.json")
    assert SisoConfig.load(tmp_path / "config.json").train_prompt == "a dog"


def test_acceleration_presets():
    from siso.config import ACCEL_PRESETS, AccelSettings

    assert set(ACCEL_PRESETS) == {"reference", "default", "fast"}
    assert AccelSettings.preset("default") == AccelSettings()
    reference = AccelSettings.preset("reference")
    assert not (reference.channels_last_vae or reference.lean_graph or reference.fuse_upsampling or reference.compile)
    assert AccelSettings.preset("default", compile=True).compile
    with pytest.raises(ValueError, match="unknown acceleration preset 'turbo'; known: reference, default, fast"):
        AccelSettings.preset("turbo")
