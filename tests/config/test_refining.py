"""The settings of a refine run: its defaults (a lower strength than an edit's, kept when other edit settings are
given) and its validation."""

import math

import pytest

from siso.config import REFINE_STRENGTH, EditConfig, IPAdapterSettings, RefineConfig, RefineSettings
from siso.config.fields import declared_field


def test_a_refine_redoes_fewer_steps_than_an_edit():
    assert RefineConfig().edit.strength == REFINE_STRENGTH == 0.5 < EditConfig().edit.strength
    merged = RefineConfig.merged("sd-turbo", {}, edit={"bg_weight": 5.0})
    assert (merged.edit.strength, merged.edit.bg_weight) == (REFINE_STRENGTH, 5.0)
    assert RefineConfig.merged("sd-turbo", {}, edit={"strength": 0.75}).edit.strength == 0.75
    assert RefineConfig.merged("sd-turbo", {"edit": {"strength": 0.25}}).edit.strength == 0.25  # a family's own
    assert EditConfig.merged("sd-turbo", {}).edit.strength == 0.75
    # with 4 steps: t = 499, 249 redone
    assert int(RefineConfig().optim.num_inference_steps * REFINE_STRENGTH) == 2


def test_the_flags_say_the_refines_defaults():
    from siso.cli.options import declared_settings

    fields = {(group, f.name): f for group, f in declared_settings(config=RefineConfig)}
    assert fields["edit", "strength"].default == REFINE_STRENGTH and "(0.5)" in fields["edit", "strength"].help
    edit = {(group, f.name): f for group, f in declared_settings(config=EditConfig)}
    assert edit["edit", "strength"].default == 0.75 and "(0.75)" in edit["edit", "strength"].help
    assert declared_field(RefineSettings, "structure_weight").declaration.flag == "--structure-weight"


def test_round_trip_through_json(tmp_path):
    config = RefineConfig(model="m", refine=RefineSettings(structure_weight=2.5))
    config.save(tmp_path / "c.json")
    assert RefineConfig.load(tmp_path / "c.json") == config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"structure_weight": -1}, "structure_weight"),
        ({"structure_weight": math.nan}, "structure_weight"),
        ({"structure_weight": math.inf}, "structure_weight"),
        ({"start": "noise"}, "start must be one of image, ip-adapter"),
        ({"check_model": " "}, "check model"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        RefineSettings(**settings)


def test_the_ip_adapter_is_the_starts_and_only_its():
    with pytest.raises(ValueError, match="takes the adapter's model"):
        RefineConfig(refine=RefineSettings(start="ip-adapter"))
    with pytest.raises(ValueError, match="only to draw its start"):
        RefineConfig(ip_adapter=IPAdapterSettings("h94/IP-Adapter"))
    config = RefineConfig(refine=RefineSettings(start="ip-adapter"), ip_adapter=IPAdapterSettings("h94/IP-Adapter"))
    assert config.ip_adapter.enabled


def test_an_edits_checks_apply():
    with pytest.raises(ValueError, match="leaves no denoising step"):
        RefineConfig.merged("sd-turbo", {}, edit={"strength": 0.1})
