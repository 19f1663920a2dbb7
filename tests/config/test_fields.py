"""`siso.config.fields`: a setting declared next to its field (`setting`), read back in field order with its type and
the defaults filled into its help (`declared`, `declared_field`)."""

from dataclasses import dataclass

import pytest

from siso.config import NegativeSettings
from siso.config.fields import Declaration, declared, declared_field, setting


@dataclass
class Knobs:
    rate: float = setting(
        0.5, flag="--rate", help="the rate ({rate:g}), for each of {count} parts", metavar="R", label="Rate", minimum=0
    )
    count: int = 3  # not declared: no flag, but its default may be named in a help
    steps: int | None = setting(None, flag="--steps", help="steps (the family's)")
    names: tuple[str, ...] = setting((), flag="--name", help="a name; repeat for more", choices=("a", "b"))


def test_declared_settings_keep_their_order_type_and_default_and_fill_the_help():
    assert Knobs() == Knobs(0.5, 3, None, ())  # `setting` is a plain dataclass field with its default
    fields = declared(Knobs)
    assert [(f.name, f.kind, f.default) for f in fields] == [
        ("rate", float, 0.5),
        ("steps", int, None),  # int | None: the type a parser converts to
        ("names", tuple, ()),  # tuple[str, ...]: a repeated flag
    ]
    rate = fields[0]
    assert rate.help == "the rate (0.5), for each of 3 parts"
    assert rate.declaration == Declaration(
        "--rate", "the rate ({rate:g}), for each of {count} parts", metavar="R", label="Rate", minimum=0
    )
    assert declared_field(Knobs, "names").declaration.choices == ("a", "b")
    with pytest.raises(KeyError, match="Knobs declares no setting 'count'"):
        declared_field(Knobs, "count")


def test_a_real_settings_help_names_its_defaults():
    negative = declared_field(NegativeSettings, "kinds")
    assert negative.declaration.flag == "--negative" and negative.kind is tuple
    assert "radius 5 px, weight 0.2" in negative.help and "InfoNCE at tau 0.07" in negative.help
    assert "{" not in negative.help
