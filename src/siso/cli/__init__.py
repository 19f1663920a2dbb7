"""The ``siso`` command line: one module per command (`generate`, `edit`, `refine`, `eval`, `bench`, `app`, and
`library` for ``siso subjects``), each parsing its options and calling the library; bad input ends in one line
(`siso.cli.errors`).

`console` is the installed ``siso`` script: it sets up the process (`siso.cli.startup`: tcmalloc) and runs `main`,
which a Python caller may call too. The command modules are imported inside `main`, after the start-up notices
of the dependencies are silenced.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from siso.cli import startup

COMMANDS = ("generate", "edit", "refine", "eval", "bench", "app", "subjects")
# A command whose module has another name (`siso.cli.subjects` holds the per-subject options).
MODULES = {"subjects": "library"}
# What a command that writes no run folder says on Ctrl-C (generate and edit say what they kept themselves).
INTERRUPTED = {
    "eval": "; finished items are kept, rerun the same command to resume",
    "app": " before the app started",  # (once serving, Gradio ends on Ctrl-C by itself)
    "bench": "; nothing of the benchmark is kept",
    "subjects": "",
}


def command_modules(argv: list[str]) -> dict:
    """Name -> module of the commands the parser needs: only the one ``argv`` runs (a command imports only what it
    uses), or all of them (``siso --help``, a typo)."""
    names = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    return {name: importlib.import_module(f"siso.cli.{MODULES.get(name, name)}") for name in names}


def build_parser(commands: dict | None = None) -> argparse.ArgumentParser:
    """The parser of ``siso``, with a subcommand per module of ``commands`` (name -> module with ``add_parser``;
    default: every command)."""
    commands = command_modules([]) if commands is None else commands
    parser = argparse.ArgumentParser(prog="siso", description="Single-image subject-driven generation (SISO).")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands.values():
        module.add_parser(sub)
    return parser


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def console() -> None:
    """The ``siso`` console script: tcmalloc where it applies (`siso.cli.startup.use_tcmalloc`), then `main`."""
    startup.use_tcmalloc(sys.argv[1:])
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    """Run ``siso ARGV`` in this process; returns the exit code (what ``siso`` exits with)."""
    argv = sys.argv[1:] if argv is None else argv
    startup.quiet_notices()  # before diffusers is imported: the notices come at import
    import diffusers
    import huggingface_hub
    import transformers

    from siso.cli.errors import EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY, EXIT_USAGE
    from siso.cli.options import check_args
    from siso.devices import resolve_dtype
    from siso.hub import ModelLoadError
    from siso.images import ImageError
    from siso.runs.folder import OutputExistsError
    from siso.runs.memory import is_out_of_memory, out_of_memory_message

    commands = command_modules(argv)
    args = build_parser(commands).parse_args(argv)
    # Per-component "Loading ..." bars would bury our own; keep the Hub's download bars (first run).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()
    # diffusers 0.42 passes an argument huggingface_hub deprecated; the warning is noise for our users.
    warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM saves like Ctrl-C
    try:
        check_args(args)
        if hasattr(commands[args.command], "check"):
            commands[args.command].check(args)
        if getattr(args, "dtype", None) == "auto":  # config.json records the dtype used
            args.dtype = resolve_dtype("auto", args.device)
        if args.command in INTERRUPTED:  # commands that print a report (or serve a page) rather than write a run
            try:
                report = commands[args.command].run(args)
            except KeyboardInterrupt:
                print(f"siso: interrupted{INTERRUPTED[args.command]}", file=sys.stderr)
                return EXIT_INTERRUPTED
            print(report or "", end="")
            return 0
        return commands[args.command].run(args, ["siso", *argv])
    except (
        ImageError,
        ModelLoadError,
        OutputExistsError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
    ) as err:
        print(f"siso: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
        print(f"siso: error: {out_of_memory_message(err)}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    finally:
        signal.signal(signal.SIGTERM, previous)
