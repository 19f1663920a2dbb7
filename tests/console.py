"""The installed ``siso`` console script, run offline as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

SISO = str(Path(sys.executable).parent / "siso")
# On the system's malloc (tests/cli/test_startup.py runs it on tcmalloc): its one line would be in every stderr.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "SISO_TCMALLOC": "0"}


def run_siso(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``siso ARGS`` to completion (5 min at most), output captured as text."""
    return subprocess.run([SISO, *args], capture_output=True, text=True, env=OFFLINE, timeout=300, **kwargs)
