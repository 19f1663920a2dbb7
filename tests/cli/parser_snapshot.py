"""The options of ``siso generate``, ``siso edit``, ``siso refine`` and ``siso eval run`` as data, and the committed
snapshot of them (tests/fixtures/parsers.json) that `test_options` compares the parsers with.

Regenerate the snapshot (only when an option is meant to change) with
``.venv/bin/python tests/cli/parser_snapshot.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from siso.cli import build_parser

SNAPSHOT = Path(__file__).parents[1] / "fixtures" / "parsers.json"
COMMANDS = (("generate",), ("edit",), ("refine",), ("eval", "run"))


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sub.choices[name]


def describe(parser: argparse.ArgumentParser) -> list[dict]:
    """Every option of ``parser`` in its order, with what the user sees of it and where its value goes."""
    groups = {id(action): group.title for group in parser._action_groups for action in group._group_actions}
    return [
        {
            "option_strings": action.option_strings,
            "dest": action.dest,
            "default": action.default,
            "type": None if action.type is None else action.type.__name__,
            "choices": None if action.choices is None else list(action.choices),
            "nargs": action.nargs,
            "const": action.const,
            "metavar": action.metavar,
            "required": action.required,
            "help": action.help,
            "action": type(action).__name__,
            "group": groups[id(action)],
        }
        for action in parser._actions
    ]


def snapshot() -> dict[str, list[dict]]:
    """``{"generate": [...], "edit": [...], "eval run": [...]}``, as JSON reads it back (tuples as lists)."""
    parsers = {}
    for names in COMMANDS:
        parser = build_parser()
        for name in names:
            parser = subparser(parser, name)
        parsers[" ".join(names)] = describe(parser)
    return json.loads(json.dumps(parsers))


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(snapshot(), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}")
