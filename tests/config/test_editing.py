"""`siso.config.editing`: the inversion presets, and the edit settings and `EditConfig` refuse bad values by name;
config.json round trips."""

import json
import math
import re

import pytest

from siso.config import EditConfig, EditSettings, InversionSettings, OptimSettings


def test_inversion_presets_and_validation():
    ddim = InversionSettings.preset("ddim")
    assert (ddim.renoise_steps, ddim.kl_weight, ddim.ac_weight, ddim.noise_correction) == (0, 0.0, 0.0, True)
    assert InversionSettings.preset("renoise") == InversionSettings()
    with pytest.raises(ValueError, match="inversion method"):
        InversionSettings(method="null-text")
    with pytest.raises(ValueError, match="kl_weight"):
        InversionSettings(kl_weight=float("nan"))
    with pytest.raises(ValueError, match="average"):
        InversionSettings(average=(5, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 0.0}, "strength must be in (0, 1], got 0.0"),
        ({"strength": math.nan}, "strength must be in (0, 1], got nan"),
        ({"bg_weight": -1.0}, "bg_weight must be a finite number >= 0, got -1.0"),
        ({"bg_target": "mask"}, "bg_target must be one of input, reconstruction, got 'mask'"),
        ({"feather": -1}, "mask_dilation and feather are pixel counts >= 0, got 8 and -1"),
    ],
)
def test_edit_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EditSettings(**kwargs)


def test_edit_config_needs_a_denoising_step_for_each_grad_step_and_round_trips():
    config = EditConfig(edit=EditSettings(strength=0.5, bg_target="reconstruction"))
    assert config.optim.num_inference_steps == 4  # editing's own schedule, which the strength cuts
    assert EditConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # JSON lists back to tuples
    with pytest.raises(ValueError, match=re.escape("strength 0.2 of 4 steps leaves no denoising step")):
        EditConfig(edit=EditSettings(strength=0.2))
    with pytest.raises(ValueError, match=re.escape("grad_steps (3) must be at most the 2 denoising steps")):
        EditConfig(optim=OptimSettings(num_inference_steps=4, grad_steps=3), edit=EditSettings(strength=0.5))
