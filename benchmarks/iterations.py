"""Seconds, CPU seconds and peak memory of each iteration of siso's default configuration, one line each.

`siso bench` gives medians and one peak for the whole run; this shows whether an iteration's cost or peak drifts from
one iteration to the next (a C allocator that keeps freed memory can fragment and creep). It runs the real loop
(`siso.bench.measure.run_configuration`, real-size architecture, random weights) in this process and, after each
optimizer step, prints the iteration's wall seconds, CPU seconds (all threads; less sensitive to other load than wall
time) and those in the kernel, peak RSS (reset after each line through ``/proc/self/clear_refs``, so Linux only) and
RSS at that point (the iteration's low point). The C allocator is the process's own: preload one to compare them,

    .venv/bin/python benchmarks/iterations.py --model sd-turbo --iters 8
    LD_PRELOAD=libtcmalloc_minimal.so.4 .venv/bin/python benchmarks/iterations.py --model sd-turbo --iters 8

Line 0 includes building the models. The median at the end is over lines 1 on. On the 2-core development CPU,
SD-Turbo at 512 px takes about 40 s per line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_post_hook

from siso.bench import BenchSettings
from siso.bench.architectures import MODELS
from siso.bench.measure import CONFIGURATIONS, run_configuration
from siso.bench.timing import kernel_counters
from siso.runs.memory import allocator, process_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-turbo", choices=MODELS, help="built at its real size, random weights")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--iters", type=int, default=8, help="iterations with an optimizer step")
    args = parser.parse_args()
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        parser.error("needs Linux: the peak of each iteration is read from /proc/self")
    try:
        # Line 0 (the warm-up), then --iters lines; the loop's last iteration takes no step and prints no line.
        settings = BenchSettings(
            model=args.model, configs=("default",), resolution=args.resolution, iters=args.iters, warmup=1,
            isolate=False, device="cpu",
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    configuration = CONFIGURATIONS["default"]
    print(f"allocator: {allocator()}", flush=True)
    lines = []

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    last = {"time": time.perf_counter(), "kernel": kernel_counters()["kernel"], "cpu": cpu()}

    def stepped(optimizer, args, kwargs) -> None:
        line = {
            "seconds": time.perf_counter() - last["time"],
            "kernel": kernel_counters()["kernel"] - last["kernel"],
            "cpu": cpu() - last["cpu"],
            "peak_gb": process_memory("VmHWM") / 1e9,
            "low_gb": process_memory("VmRSS") / 1e9,
        }
        lines.append(line)
        print(
            f"{len(lines) - 1}: {line['seconds']:.1f} s, CPU {line['cpu']:.1f} s, kernel {line['kernel']:.2f} CPU s, "
            f"peak {line['peak_gb']:.2f} GB, at the step {line['low_gb']:.2f} GB",
            flush=True,
        )
        clear_refs.write_text("5")  # the next line's peak is its own
        last["time"], last["kernel"], last["cpu"] = time.perf_counter(), kernel_counters()["kernel"], cpu()

    handle = register_optimizer_step_post_hook(stepped)
    try:
        run_configuration(args.model, settings, "default", configuration)
    except KeyboardInterrupt:
        sys.exit(f"interrupted after {len(lines)} lines")
    finally:
        handle.remove()
    measured = lines[1:]
    print(
        f"median over {len(measured)}: {statistics.median(m['seconds'] for m in measured):.1f} s, CPU "
        f"{statistics.median(m['cpu'] for m in measured):.1f} s, kernel "
        f"{statistics.median(m['kernel'] for m in measured):.2f} CPU s; peak {min(m['peak_gb'] for m in measured):.2f}"
        f"-{max(m['peak_gb'] for m in measured):.2f} GB"
    )


if __name__ == "__main__":
    main()
