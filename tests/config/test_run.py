"""`SisoConfig` (`siso.config.run`): the family's defaults then the caller's (`merged`, and
`siso.backbones.config_for`, which looks the family's up), and config.json round trips (acceleration settings
included)."""

import pytest

from siso.config import OptimSettings, SisoConfig


def test_config_for_applies_the_family_defaults_then_the_callers_values(model_dirs):
    from siso.backbones import config_for
    from siso.config import AccelSettings, EditConfig, MemorySettings

    assert config_for(SisoConfig, "flux-schnell").optim.lr == 2e-4  # the family's (the reference code's)
    assert SisoConfig(model="flux-schnell").optim.lr == OptimSettings.lr  # the plain constructor takes none
    sana = config_for(SisoConfig, "sana", optim={"lr": 1e-3, "max_iters": None}, lora={"rank": 8})
    assert (sana.optim.lr, sana.optim.num_inference_steps, sana.optim.max_iters) == (1e-3, 20, OptimSettings.max_iters)
    assert sana.lora.rank == 8 and sana.model == "sana"
    memory = MemorySettings(gradient_checkpointing=True)
    config = config_for(SisoConfig, str(model_dirs["sd"]), memory=memory, resolution=None, train_prompt="a dog")
    assert config.memory is memory and config.resolution is None and config.train_prompt == "a dog"
    assert config_for(SisoConfig, "sd-turbo", accel={"compile": True}).accel == AccelSettings(compile=True)
    # Editing keeps its own schedule (4 steps that the strength cuts), over the family's generation steps.
    assert config_for(EditConfig, "sd-turbo").optim.num_inference_steps == 4
    assert config_for(EditConfig, "sd-turbo", optim={"num_inference_steps": 8}).optim.num_inference_steps == 8
    assert config_for(SisoConfig, "not-a-model").optim == OptimSettings()  # resolved (and refused) when it loads
    with pytest.raises(TypeError, match="SisoConfig has no field optimizer"):
        config_for(SisoConfig, "sd-turbo", optimizer={})
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        config_for(SisoConfig, "sd-turbo", optim={"lr": -1.0})


def test_merged_takes_the_defaults_it_is_given_then_the_callers_values():
    from siso.config import EditConfig

    defaults = {"optim": {"lr": 8e-4, "num_inference_steps": 20}, "lora": {"rank": 8}}
    config = SisoConfig.merged("any-model", defaults, optim={"lr": 1e-3, "seed": None}, train_prompt="a dog")
    assert (config.model, config.train_prompt) == ("any-model", "a dog")
    assert (config.optim.lr, config.optim.num_inference_steps, config.optim.seed) == (1e-3, 20, OptimSettings.seed)
    assert config.lora.rank == 8
    assert SisoConfig.merged("any-model", {}) == SisoConfig(model="any-model")
    # Editing takes the family's values but its own schedule.
    edit = EditConfig.merged("any-model", defaults)
    assert (edit.optim.lr, edit.optim.num_inference_steps, edit.lora.rank) == (8e-4, 4, 8)
    assert defaults["optim"]["num_inference_steps"] == 20  # the family's defaults are left as they were


def test_a_config_json_from_before_the_acceleration_settings_still_loads(tmp_path):
    from siso.config import AccelSettings

    data = SisoConfig().to_dict()
    assert data["accel"] == {"channels_last_vae": True, "lean_graph": True, "fuse_upsampling": True, "compile": False}
    del data["accel"]
    data["compile"] = True
    assert SisoConfig.from_dict(data).accel == AccelSettings(compile=True)
    SisoConfig(train_prompt="a dog").save(tmp_path / "config.json")
    assert SisoConfig.load(tmp_path / "config.json").train_prompt == "a dog"
