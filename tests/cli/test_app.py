"""``siso app`` (`siso.cli.app`): its options checked before anything loads, and the console script serving the
page on localhost."""

import sys
import time
from pathlib import Path

import pytest
from console import run_siso

from siso.cli.app import is_loopback


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_siso_app_without_gradio_says_what_to_install(monkeypatch, capsys):
    from siso import cli

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.delitem(sys.modules, "siso.app.ui", raising=False)
    assert cli.main(["app", "--model", "sd-turbo"]) == 2
    assert "siso app needs Gradio, which is not installed: pip install 'siso[app]'" in capsys.readouterr().err


def test_siso_app_refuses_a_bad_port():
    result = run_siso(["app", "--port", "70000"])
    assert result.returncode == 2 and "--port must be 1 to 65535" in result.stderr


@pytest.mark.parametrize("gradio", ["installed", "missing"])
def test_siso_app_refuses_a_bad_upload_limit_before_anything_loads(monkeypatch, capsys, gradio):
    from siso import cli

    if gradio == "missing":  # the limit is reported, as the port is, before the missing Gradio
        monkeypatch.setitem(sys.modules, "gradio", None)
        monkeypatch.delitem(sys.modules, "siso.app.ui", raising=False)
    assert cli.main(["app", "--model", "sd-turbo", "--max-upload-mb", "0"]) == 2
    assert capsys.readouterr().err == "siso: error: --max-upload-mb must be more than 0, got 0\n"


def test_siso_app_serves_the_page_on_localhost(model_dirs, tmp_path):
    """The console script loads the model, prints its URL, binds 127.0.0.1 and serves the page until stopped."""
    import signal
    import subprocess
    import urllib.request

    from console import OFFLINE, SISO

    from ..app.test_app_browser import _free_port

    port = _free_port()
    args = [SISO, "app", "--model", str(model_dirs["sd"]), "--port", str(port), "--root", str(tmp_path / "runs")]
    args += ["--dino-model", str(model_dirs["dino"]), "--ir-model", str(model_dirs["clip"]), "--device", "cpu"]

    # Ctrl-C as in a terminal, even where this test runs in a background job (which ignores SIGINT, and children
    # inherit that).
    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    server = subprocess.Popen(args, env=OFFLINE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        lines = []
        while not any("siso: app at" in line for line in lines):
            line = server.stderr.readline()
            assert line, f"siso app ended: {''.join(lines)}"
            lines.append(line)
        assert f"siso: app at http://127.0.0.1:{port}" in "".join(lines)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200 and "siso" in page.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the page did not come up"
                time.sleep(0.5)
        # Listening on 127.0.0.1 only (Linux's table: local address in hex, state 0A = listening).
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        listening = {line.split()[1] for line in table if line.split()[3] == "0A"}
        assert {a for a in listening if a.endswith(f":{port:04X}")} == {f"0100007F:{port:04X}"}
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: the server closes and the process ends
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError(f"siso app did not end on Ctrl-C: {server.stderr.read()[-2000:]}") from None


def test_ctrl_c_while_the_app_loads_is_one_line(monkeypatch, capsys):
    from siso import cli
    from siso.app import studio

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(studio, "load_backbone", interrupted)
    assert cli.main(["app", "--model", "sd-turbo"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "siso: interrupted before the app started"
