"""A setting a user sets is declared once, next to its dataclass field: its default, command-line flag, help text
and, for the settings the app's page offers, a short label and the bounds a form gives it (`setting`). The parsers
of ``siso generate``, ``siso edit`` and ``siso eval run`` (`siso.cli.options`) and the app's "Advanced" panel are
derived from these declarations (`declared`); config.json is the dataclasses themselves.

The validation of a value stays in the settings' ``__post_init__``: the bounds here only shape a form.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KEY = "siso.setting"  # the field metadata key of a `Declaration`


@dataclass(frozen=True)
class Declaration:
    """What a user sees of a setting.

    Attributes:
        flag: The command-line flag (``--lr``); a bool field is a switch (``store_true``), a tuple field is repeated
            (``append``).
        help: The flag's help text; ``{name}`` stands for the default of the settings' field ``name``.
        metavar: The flag's value as the help names it (``PX``).
        choices: The values the flag takes.
        section: The ``--help`` section the flag is listed under; ``None``: the command's options.
        label: The form's label, for the settings the app's page offers.
        minimum: The least value a form offers (inclusive).
        maximum: The greatest value a form offers (inclusive).
        filled: The parser fills in the field's default; otherwise a flag left out is ``None`` and the backbone
            family's default (or the field's own) applies.
        to_field: Turns the flag's value into the field's (``--keep-text-encoders`` is ``not`` of
            ``offload_text_encoders``); ``None``: the value as parsed.
    """

    flag: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    section: str | None = None
    label: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    filled: bool = False
    to_field: Callable[[Any], Any] | None = None


def setting(default: Any, *, flag: str, help: str, **declaration) -> Any:
    """A dataclass field with ``default`` and its `Declaration` (``flag``, ``help`` and the rest by name)."""
    return dataclasses.field(default=default, metadata={KEY: Declaration(flag, help, **declaration)})


@dataclass(frozen=True)
class Declared:
    """A declared field of a settings class.

    Attributes:
        name: The field's name.
        kind: Its type without ``None`` (``int`` for ``int | None``; ``tuple`` for ``tuple[str, ...]``).
        default: Its default.
        help: The declaration's help text with the defaults filled in.
        declaration: The rest of its `Declaration`.
    """

    name: str
    kind: type
    default: Any
    help: str
    declaration: Declaration


def declared(cls: type, defaults: dict | None = None) -> list[Declared]:
    """The declared fields of the settings dataclass ``cls``, in field order.

    Args:
        cls: The settings dataclass.
        defaults: Field -> the default of the run that uses ``cls`` where it differs from the field's own (a refine
            run's ``strength``); the flags' defaults and help texts say these.
    """
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING} | (
        defaults or {}
    )
    fields = []
    for f in dataclasses.fields(cls):
        if KEY not in f.metadata:
            continue
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            (kind,) = (arg for arg in typing.get_args(kind) if arg is not type(None))
        kind = typing.get_origin(kind) or kind
        declaration = f.metadata[KEY]
        fields.append(Declared(f.name, kind, defaults[f.name], declaration.help.format(**defaults), declaration))
    return fields


def declared_field(cls: type, name: str) -> Declared:
    """The declared field ``name`` of ``cls``.

    Raises:
        KeyError: ``cls`` declares no field ``name``.
    """
    for field in declared(cls):
        if field.name == name:
            return field
    raise KeyError(f"{cls.__name__} declares no setting {name!r}")
