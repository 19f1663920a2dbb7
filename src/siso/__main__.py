"""``python -m siso ARGS``: the ``siso`` command, also from a checkout that is not installed (`benchmarks/gpu.sh`)."""

from siso.cli import console

console()
