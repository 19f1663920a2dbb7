"""How the command line ends: exit codes, and what a command says when it is interrupted."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siso.runs.folder import RunFolder

EXIT_USAGE, EXIT_OUT_OF_MEMORY, EXIT_INTERRUPTED = 2, 3, 130


def interruptible(work, out: RunFolder) -> dict | None:
    """Run ``work()``; on Ctrl-C / SIGTERM say what was kept and return None."""
    try:
        return work()
    except KeyboardInterrupt:
        if (out.path / "best.png").is_file():
            kept = "best-so-far image, LoRA and config are"
        elif (out.path / "metrics.json").is_file():
            kept = "images made so far are"
        else:
            print("siso: interrupted before anything was made; nothing to keep", file=sys.stderr)
            return None
        print(f"siso: interrupted; the {kept} in {out.path} (metrics.json: complete = false)", file=sys.stderr)
        return None
