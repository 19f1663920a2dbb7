"""``siso bench``: what a SISO iteration costs on this machine, at the published architectures with random weights.

Every configuration runs the real loop (`siso.optimize.optimize_lora`) for warm-up + N iterations and reports the
median and spread of seconds per iteration, CPU seconds (and those in the kernel: page faults), peak memory, FLOPs per
iteration (torch's ``FlopCounterMode``), the achieved TFLOP/s and its share of the device's bf16 peak (known GPUs
only), the time from start to the first image, and by part, seconds and CPU seconds in the kernel. ``reference`` does
what the SISO reference code does (fp32, the prompt re-encoded every iteration, every model resident on the device,
the system's malloc); siso's ``default`` is reported as a ratio to it, so the comparison holds on a noisy machine.
With several subjects (``subjects``) each configuration also scores that many in side-by-side boxes
(`siso.losses.CompositionLoss`), reported as ratios to its one-subject row. ``compose-saved`` times saved subjects
drawn together by region (K + 1 denoiser passes a step) against a single-subject ``--lora`` image, and a polish
iteration against ``default``'s single-subject one.

Modules: `siso.bench.run` (settings, one process per configuration), `siso.bench.measure` (one configuration),
`siso.bench.compose` (``compose-saved``), `siso.bench.loop` (the timed loop), `siso.bench.timing` (by part, FLOPs),
`siso.bench.architectures` (the real-size models), `siso.bench.report`;
`siso.bench.estimate` (``--memory``: the GPU memory of optimizing at real size, estimated on the meta device).
"""

from siso.bench.estimate import estimate_memory, estimate_model, memory_report
from siso.bench.measure import CONFIGURATIONS
from siso.bench.report import report
from siso.bench.run import BenchError, BenchSettings, run_bench

__all__ = [
    "CONFIGURATIONS",
    "BenchError",
    "BenchSettings",
    "estimate_memory",
    "estimate_model",
    "memory_report",
    "report",
    "run_bench",
]
