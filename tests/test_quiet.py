"""The start-up filter silences transformers' two torchvision-fallback notices and nothing else."""

import logging
import subprocess
import sys

from siso.quiet import TorchvisionFallbackFilter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("transformers.utils.import_utils", logging.WARNING, __file__, 1, message, None, None)


def test_filter_drops_exactly_the_two_notices():
    notice = (
        "`{0}` requires torchvision (not installed); falling back to `{0}Pil` for backward compatibility. Install "
        "torchvision to use the default backend, or import `{0}Pil` directly to silence this warning."
    )
    keep = TorchvisionFallbackFilter().filter
    assert not keep(_record(notice.format("CLIPImageProcessor")))
    assert not keep(_record(notice.format("SiglipImageProcessor")))
    assert keep(_record(notice.format("ViTImageProcessor")))
    assert keep(_record("Could not load PIL fallback CLIPImageProcessorPil: boom"))


def test_other_transformers_warnings_still_print():
    # A third image processor's fallback notice (same logger, same mechanism) and a plain warning get through.
    code = (
        "import siso, transformers; transformers.ViTImageProcessor; "
        "transformers.utils.logging.get_logger('transformers.utils.import_utils').warning('another warning')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "`ViTImageProcessor` requires torchvision" in proc.stderr and "another warning" in proc.stderr
    assert "CLIPImageProcessor" not in proc.stderr and "SiglipImageProcessor" not in proc.stderr
