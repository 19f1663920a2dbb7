"""The start-up filters silence the dependencies' notices listed in `siso.quiet` and nothing else."""

import logging
import subprocess
import sys

from siso.quiet import NOTICES, NoticeFilter


def _record(message: str, logger: str = "transformers.utils.import_utils") -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, message, None, None)


def test_filter_drops_exactly_the_two_notices():
    notice = (
        "`{0}` requires torchvision (not installed); falling back to `{0}Pil` for backward compatibility. Install "
        "torchvision to use the default backend, or import `{0}Pil` directly to silence this warning."
    )
    keep = NoticeFilter(NOTICES["transformers.utils.import_utils"]).filter
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


def test_torchao_start_up_notices_are_dropped_and_others_kept():
    keep = {name: NoticeFilter(pattern).filter for name, pattern in NOTICES.items()}
    so = "/venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
    assert not keep["torchao"](_record(f"Failed to load {so}: Could not load this library: {so}"))
    assert keep["torchao"](_record("Failed to load /x/torchao/_C_int4.so: boom"))  # a kernel siso may use
    enum = "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as ..."
    assert not keep["torch.utils._pytree"](_record(enum))
    assert keep["torch.utils._pytree"](_record("<enum 'Other'> is an Enum subclass and is now natively supported"))
    notice = "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`"
    assert not keep["diffusers.quantizers.torchao.torchao_quantizer"](_record(notice))


def test_importing_siso_with_torchao_installed_prints_nothing():
    proc = subprocess.run(
        [sys.executable, "-c", "import siso.cli, diffusers.quantizers, torchao"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
