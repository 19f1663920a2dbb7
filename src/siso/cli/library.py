"""``siso subjects``: list the library of saved subjects (`siso.library`), or remove one; and the options that save a
run's subject there (``--save-as``, ``--library``), shared by ``generate``, ``edit`` and ``refine``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from siso.library import LIBRARY_ENV, Library

LIBRARY_HELP = f"the subject library folder (default: ${LIBRARY_ENV}, else siso/subjects in the user data folder)"


def add_parser(sub) -> None:
    """Add the ``subjects`` command to the top-level subparsers."""
    subjects = sub.add_parser(
        "subjects",
        help="list the library of saved subjects (--save-as NAME keeps one), or remove one",
        description="List the subjects saved with --save-as NAME (name, model family, photos, size, when saved), or "
        "remove one. `siso generate --lora NAME` draws a saved subject.",
    )
    subjects.add_argument(
        "action", nargs="?", choices=("list", "remove"), default="list", help="list (default), or remove NAME"
    )
    subjects.add_argument("name", nargs="?", metavar="NAME", help="the subject to remove")
    subjects.add_argument("--library", metavar="DIR", help=LIBRARY_HELP)


def check(args: argparse.Namespace) -> None:
    """Refuse a remove without a name, or a list with one.

    Raises:
        ValueError: naming what to give.
    """
    if args.action == "remove" and args.name is None:
        raise ValueError("name the subject to remove: siso subjects remove NAME")
    if args.action == "list" and args.name is not None:
        raise ValueError(f"siso subjects lists them all; to remove {args.name}: siso subjects remove {args.name}")


def run(args: argparse.Namespace) -> str:
    """Run ``siso subjects``; returns what it prints (the table, or what was removed)."""
    library = Library(args.library)
    if args.action == "remove":
        library.remove(args.name)
        return f"siso: removed {args.name} from {library.root}\n"
    entries = library.entries()
    if not entries:
        return f"siso: no subjects in {library.root} yet; keep one with --save-as NAME (generate, edit, refine)\n"
    rows = [("name", "family", "photos", "size", "saved")]
    for entry in entries:
        saved = entry.saved.astimezone().strftime("%Y-%m-%d %H:%M")
        rows.append((entry.name, entry.family or "?", str(entry.photos), _size(entry.size), saved))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return f"{len(entries)} saved subject(s) in {library.root}\n" + "\n".join(lines) + "\n"


def _size(count: int) -> str:
    """Bytes as a person reads them: 812 B, 3.4 MB."""
    for unit in ("B", "kB", "MB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def add_save_options(parser: argparse.ArgumentParser) -> None:
    """``--save-as`` and ``--library``, the options of ``generate``, ``edit`` and ``refine`` that keep the run's subject
    in the library (`check_save_options` checks them, `save_subject` saves)."""
    parser.add_argument(
        "--save-as",
        metavar="NAME",
        help="also keep the subject in the library as NAME, to draw it later with --lora NAME (`siso subjects` "
        "lists the library)",
    )
    parser.add_argument("--library", metavar="DIR", help=LIBRARY_HELP)


def check_save_options(args: argparse.Namespace) -> None:
    """Check ``--save-as`` before anything loads: a plain file name, free in a library that can be written (taken:
    only with ``--overwrite``); ``--library`` alone must have a use.

    Raises:
        ValueError: naming the option, or (`siso.library.LibraryError`) the name or the folder.
    """
    if args.save_as is not None:
        Library(args.library).check_free(args.save_as, args.overwrite)
    elif args.library is not None and getattr(args, "lora", None) is None:
        looked_up = " and where --lora looks up names" if hasattr(args, "lora") else ""
        raise ValueError(f"--library is where --save-as saves{looked_up}; add --save-as NAME or drop --library")


def save_subject(args: argparse.Namespace, folder: Path, photos: Sequence[str] | None = None) -> None:
    """After a run: keep its subject ``folder`` in the library under ``--save-as`` (if given) and say so.

    Args:
        args: The parsed arguments of a command with `add_save_options`.
        folder: The subject folder (the run's ``lora/``, or a reused one).
        photos: As `siso.library.Library.save`.
    """
    if args.save_as is None:
        return
    library = Library(args.library)
    library.save(folder, args.save_as, args.overwrite, photos)
    print(f"siso: saved the subject as {args.save_as} in {library.root}")
