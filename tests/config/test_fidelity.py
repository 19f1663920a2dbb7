"""`siso.config.fidelity`: ``--ip-adapter``'s value parsed into `IPAdapterSettings`, and the negative targets' and the
adapter's settings refuse bad values in a message that names them."""

import math
import re

import pytest

from siso.config import IPAdapterSettings, NegativeSettings


def test_ip_adapter_spec_is_the_model_then_an_optional_weight_file():
    assert IPAdapterSettings.parse("h94/IP-Adapter") == IPAdapterSettings("h94/IP-Adapter", None, 0.5)
    parsed = IPAdapterSettings.parse("adapters/mine:sdxl_models/a.safetensors", scale=0.7)
    assert parsed == IPAdapterSettings("adapters/mine", "sdxl_models/a.safetensors", 0.7) and parsed.enabled
    assert not IPAdapterSettings().enabled  # no model: no adapter
    for spec in (":", "h94/IP-Adapter:", " "):
        with pytest.raises(ValueError, match=re.escape(f"--ip-adapter takes ID|DIR[:WEIGHT_FILE], got {spec!r}")):
            IPAdapterSettings.parse(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": " "}, "the IP-Adapter model must not be empty"),
        ({"model": "h94/IP-Adapter", "weight_name": ""}, "the IP-Adapter weight file must not be empty"),
        ({"scale": math.inf}, "the IP-Adapter scale must be a finite number >= 0, got inf"),
        ({"scale": -0.5}, "the IP-Adapter scale must be a finite number >= 0, got -0.5"),
    ],
)
def test_ip_adapter_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        IPAdapterSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ("sharp",)}, "unknown negative 'sharp'; choose from blur, generic"),
        ({"kinds": ("blur", "blur")}, "a negative is named twice: blur, blur"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"beta": math.nan}, "beta must be a finite number > 0, got nan"),
        ({"blur_weight": -0.2}, "blur_weight must be a finite number > 0, got -0.2"),
        ({"generic_images": 0}, "generic_images must be >= 1, got 0"),
    ],
)
def test_negative_settings_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        NegativeSettings(**kwargs)


def test_negative_kinds_from_json_are_a_tuple_and_name_the_terms():
    negatives = NegativeSettings(kinds=["generic"])  # config.json holds a list
    assert negatives.kinds == ("generic",) and negatives.generic and not negatives.blur
    assert not NegativeSettings().blur and not NegativeSettings().generic  # none by default: the paper's loss
