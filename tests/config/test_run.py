"""`SisoConfig` (`siso.config.run`): the family's defaults then the caller's (`for_model`), config.json round trips,
and the acceleration presets it carries."""

import pytest

from siso.config import OptimSettings, SisoConfig


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
