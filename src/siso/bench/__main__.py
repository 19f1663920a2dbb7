"""``python -m siso.bench SPEC``: one benchmark configuration in a fresh process (`siso.bench._run_isolated`)."""

import sys

from siso.bench import _worker

_worker(sys.argv[1])
