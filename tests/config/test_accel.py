"""`siso.config.accel`: the acceleration presets by name, and an unknown one refused."""

import pytest


def test_acceleration_presets():
    from siso.config import ACCEL_PRESETS, AccelSettings

    assert set(ACCEL_PRESETS) == {"reference", "default", "fast"}
    assert AccelSettings.preset("default") == AccelSettings()
    reference = AccelSettings.preset("reference")
    assert not (reference.channels_last_vae or reference.lean_graph or reference.fuse_upsampling or reference.compile)
    assert AccelSettings.preset("default", compile=True).compile
    with pytest.raises(ValueError, match="unknown acceleration preset 'turbo'; known: reference, default, fast"):
        AccelSettings.preset("turbo")
