"""What the ``siso`` command sets up for itself (`siso.cli.startup`): the filters that silence the dependencies'
notices listed there and nothing else, and tcmalloc; `import siso` sets up none of it."""

import json
import logging
import os
import subprocess
import sys

import pytest
from console import OFFLINE, SISO, run_siso

from siso.cli.startup import NOTICES, TCMALLOC_ENV, NoticeFilter, tcmalloc_library


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
        "from siso.cli.startup import quiet_notices; quiet_notices(); import transformers; "
        "transformers.ViTImageProcessor; "
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


def test_the_command_with_torchao_installed_prints_nothing():
    code = "from siso.cli.startup import quiet_notices; quiet_notices(); import diffusers.quantizers, torchao, siso.cli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    proc = run_siso(["generate", "--help"])  # the command modules loaded behind the filters
    assert proc.returncode == 0 and proc.stderr == ""


# In a fresh process: what `import siso` (and its public names) changed, as JSON.
IMPORTED = """
import json, logging, os, sys
before = dict(os.environ)
import siso
names = [siso.SisoConfig, siso.load_backbone, siso.optimize_subject, siso.edit_subject, siso.save_lora]
packages = ("gradio", "siso.cli", "siso.eval", "siso.bench", "siso.app")
imported = [p for p in packages if p in sys.modules]
from siso.cli.startup import NOTICES  # (imports siso.cli, after the look at sys.modules)
print(json.dumps({
    "environment": {k: v for k, v in os.environ.items() if before.get(k) != v},
    "filtered": [n for n in NOTICES if any(type(f).__name__ == "NoticeFilter" for f in logging.getLogger(n).filters)],
    "imported": imported,
}))
"""


def test_import_siso_changes_nothing_in_the_process():
    env = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", IMPORTED], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"environment": {}, "filtered": [], "imported": []}


# --- tcmalloc ---------------------------------------------------------------------------------------------------------

TCMALLOC = tcmalloc_library()
needs_tcmalloc = pytest.mark.skipif(
    TCMALLOC is None, reason="tcmalloc is not installed (apt install libtcmalloc-minimal4)"
)


@needs_tcmalloc
def test_the_command_runs_itself_again_on_tcmalloc_once_and_says_so():
    env = {k: v for k, v in OFFLINE.items() if k not in ("LD_PRELOAD", TCMALLOC_ENV)}
    code = (
        "import sys; from siso.cli import startup; startup.use_tcmalloc(sys.argv[1:]); "
        "import os; print(os.environ.get('LD_PRELOAD'), 'tcmalloc' in open('/proc/self/maps').read())"
    )
    proc = subprocess.run([sys.executable, "-c", code, "generate"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [TCMALLOC, "True"]
    assert proc.stderr == f"siso: CPU memory through tcmalloc ({TCMALLOC}); SISO_TCMALLOC=0 keeps the system's malloc\n"


@needs_tcmalloc
@pytest.mark.parametrize(
    ("env", "argv"),
    [
        ({TCMALLOC_ENV: "0"}, ["generate"]),
        ({"LD_PRELOAD": "libm.so.6"}, ["generate"]),
        ({}, ["generate", "--help"]),
        ({}, ["subjects"]),
    ],
)
def test_tcmalloc_is_not_preloaded_when_told_not_to_or_already_preloading(env, argv):
    base = {k: v for k, v in OFFLINE.items() if k not in ("LD_PRELOAD", TCMALLOC_ENV)}
    code = (
        "import sys; from siso.cli import startup; startup.use_tcmalloc(sys.argv[1:]); "
        "print('tcmalloc' in open('/proc/self/maps').read())"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"] and proc.stderr == ""


@needs_tcmalloc
def test_the_installed_command_says_it_runs_on_tcmalloc():
    env = {k: v for k, v in OFFLINE.items() if k not in ("LD_PRELOAD", TCMALLOC_ENV)}
    proc = subprocess.run([SISO, "bench", "--model", "nope"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"siso: CPU memory through tcmalloc ({TCMALLOC}); SISO_TCMALLOC=0 keeps the system's malloc",
        "siso: error: siso bench builds these backbones at their published architectures: sdxl-turbo, sd-turbo, "
        "flux-schnell, sana",
    ]


@needs_tcmalloc
def test_the_bench_reports_the_allocator_of_each_configuration():
    from siso.bench import CONFIGURATIONS
    from siso.bench.run import worker_environment

    preloaded = {**os.environ, "LD_PRELOAD": TCMALLOC}
    assert "LD_PRELOAD" not in worker_environment(CONFIGURATIONS["reference"], preloaded)
    assert worker_environment(CONFIGURATIONS["default"], preloaded)["LD_PRELOAD"] == TCMALLOC


def test_console_script_starts_without_transformers_torchvision_notices():
    proc = run_siso(["--help"])
    assert proc.returncode == 0 and "usage: siso" in proc.stdout
    assert "requires torchvision" not in proc.stderr and proc.stderr == ""
