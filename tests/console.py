"""The installed ``siso`` console script, run offline as a user runs it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

SISO = str(Path(sys.executable).parent / "siso")
# On the system's malloc (tests/cli/test_startup.py runs it on tcmalloc): its one line would be in every stderr.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "SISO_TCMALLOC": "0"}


def run_siso(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``siso ARGS`` to completion (5 min at most), output captured as text."""
    return subprocess.run([SISO, *args], capture_output=True, text=True, env=OFFLINE, timeout=300, **kwargs)


def accelerate_launch(processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``processes`` CPU processes on a free port (tests may run side by side)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    return [
        str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
