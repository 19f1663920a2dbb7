"""Memory: the peak meter (`siso.runs.memory.PeakMemory`) and the one-line out-of-memory message."""

import json
import subprocess
import sys

import torch

from siso.backbones import UNetBackbone
from siso.cli import errors, main
from siso.runs.memory import PeakMemory, out_of_memory_message


def test_out_of_memory_is_one_line_naming_the_options(
    model_dirs, subject_path, similarity_args, tmp_path, monkeypatch, capsys
):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 23.55 GiB of which ..."
        )

    monkeypatch.setattr(UNetBackbone, "sample", out_of_memory)
    argv = ["generate", "--subject", str(subject_path), "--model", str(model_dirs["sd"]), "--prompt", "a dog"]
    argv += similarity_args
    code = main([*argv, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == errors.EXIT_OUT_OF_MEMORY
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("siso: error: out of memory on the GPU (tried to allocate 2.50 gib); to use less, try ")
    assert "--gradient-checkpointing" in err and "--quantize" in err


def test_cpu_out_of_memory_message():
    err = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried ...")
    assert out_of_memory_message(err).startswith("out of memory on the CPU; to use less, try --gradient-checkpointing")


def test_peak_memory_sees_a_large_allocation():
    # In a fresh process: in this one, memory freed by earlier tests may be reused without the RSS growing.
    code = (
        "import json, torch\n"
        "from siso.runs.memory import PeakMemory\n"
        "with PeakMemory('cpu') as peak:\n"
        "    block = torch.ones(64 * 2**20 // 4)\n"  # 64 MiB, touched
        "    del block\n"
        "print(json.dumps({'bytes': peak.bytes, 'peak': peak.peak, 'record': peak.record()}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 60 * 2**20 < peak["bytes"] < 80 * 2**20 and peak["peak"] >= peak["bytes"]
    assert peak["record"] == {"peak_memory_gb": peak["peak"] / 1e9, "peak_memory_kind": "process RSS"}
    with PeakMemory("meta") as nothing:  # a device it cannot measure: no figures, no error
        pass
    assert nothing.record() == {"peak_memory_gb": None, "peak_memory_kind": None}
