"""Seconds and peak memory of siso's default iteration against resolution and steps with gradient, from `siso bench`.

Each point is one `siso.bench.run_bench` of the ``default`` configuration (a fresh process each, real-size
architecture, random weights). Writes a Markdown table and the raw rows:

    .venv/bin/python benchmarks/scaling.py --model sd-turbo --json benchmarks/results/scaling-sd-turbo-cpu.json

On the 2-core development CPU the SD-Turbo sweep takes about 30 minutes. Points that would not fit in memory can be
run with gradient checkpointing (``--checkpoint-from 1024``: from that resolution on), and the table says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from siso.bench import BenchError, BenchSettings, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-turbo")
    parser.add_argument("--resolutions", default="512,768,1024", help="with 1 step with gradient")
    parser.add_argument("--grad-steps", default="1,2,3", help="at the first resolution")
    parser.add_argument("--checkpoint-from", type=int, help="resolution from which to add --gradient-checkpointing")
    parser.add_argument("--iters", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--json", required=True, metavar="FILE")
    args = parser.parse_args()
    resolutions = [int(r) for r in args.resolutions.split(",")]
    steps = [int(k) for k in args.grad_steps.split(",")]
    points = [(resolutions[0], k) for k in steps] + [(r, 1) for r in resolutions[1:]]
    rows = []
    for resolution, grad_steps in points:
        checkpointing = args.checkpoint_from is not None and resolution >= args.checkpoint_from
        settings = BenchSettings(
            model=args.model, configs=("default",), resolution=resolution, grad_steps=grad_steps, iters=args.iters,
            warmup=args.warmup, gradient_checkpointing=checkpointing, device=args.device,
        )  # fmt: skip
        try:
            result = run_bench(settings)
        except BenchError as err:  # e.g. killed for memory: a row that says so, and on to the next point
            name = "default + checkpointing" if checkpointing else "default"
            row = {"resolution": resolution, "grad_steps": grad_steps, "config": name, "error": str(err)}
        else:
            row = {"resolution": resolution, "grad_steps": grad_steps, "device": result["device"], **result["rows"][0]}
        rows.append(row)
        print(_line(row), flush=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    print("\n".join(["", _header(), *map(_line, rows)]))


def _header() -> str:
    return (
        "| resolution | steps with gradient | config | s/iter | CPU s/iter | peak memory | GFLOP/iter |\n"
        "|---|---|---|---|---|---|---|"
    )


def _line(row: dict) -> str:
    if "error" in row:
        return f"| {row['resolution']} | {row['grad_steps']} | {row['config']} | {row['error']} | | | |"
    memory = "n/a" if row["peak_memory_gb"] is None else f"{row['peak_memory_gb']:.2f} GB"
    return (
        f"| {row['resolution']} | {row['grad_steps']} | {row['config']} | {row['seconds_per_iteration']:.1f} | "
        f"{row['cpu_seconds_per_iteration']:.1f} | {memory} | {row['flops_per_iteration'] / 1e9:.0f} |"
    )


if __name__ == "__main__":
    main()
