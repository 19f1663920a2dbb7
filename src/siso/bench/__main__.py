"""``python -m siso.bench SPEC``: one benchmark configuration in a fresh process (`siso.bench.run._run_isolated`)."""

import sys

from siso.bench.run import _worker

_worker(sys.argv[1])
