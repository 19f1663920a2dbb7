"""How a command ends (`siso.cli.errors`): SIGTERM during a run keeps the best so far and says where, exit 130."""

import json
import signal
import subprocess
import time

from console import OFFLINE, SISO


def test_sigterm_keeps_best_so_far(base_args, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            SISO,
            *base_args,
            "--prompt",
            "a dog",
            "--max-iters",
            "100000",
            "--patience",
            "100000",
            "--quiet",
            "--out",
            str(out),
        ],
        env=OFFLINE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "iterations" / "0002.png").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted; the best-so-far image, LoRA and config are in" in stderr and "Traceback" not in stderr
    for name in ("best.png", "config.json", "metrics.json", "lora/pytorch_lora_weights.safetensors", "loss.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] is False and metrics["stop_reason"] == "interrupted"
