"""``siso app``: parsed here; the page is `siso.app.ui`, the work `siso.app.studio`."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from siso.config import DTYPES, SimilaritySettings

INSTALL = "pip install 'siso[app]'"


def add_parser(sub) -> None:
    """Add the ``app`` command to the top-level subparsers."""
    from siso.app.settings import MAX_UPLOAD_MB, default_root
    from siso.cli.library import LIBRARY_HELP

    app = sub.add_parser(
        "app",
        help="a local web page: learn a subject, watch every iteration, stop it, generate with it",
        description="Serve a web page (Gradio) that learns a subject from one photo while you watch every iteration, "
        "stops when you say, and generates with it. The models load once; one run at a time. Binds 127.0.0.1 "
        f"unless --host says otherwise. Needs the app extra: {INSTALL}.",
    )
    app.add_argument("--model", default="sdxl-turbo", metavar="NAME|DIR", help="backbone (sdxl-turbo)")
    app.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    app.add_argument("--port", type=int, default=7860, help="port (7860)")
    app.add_argument(
        "--root", default=str(default_root()), metavar="DIR", help=f"runs go under DIR/<session>/ ({default_root()})"
    )
    app.add_argument(
        "--max-upload-mb", type=float, default=MAX_UPLOAD_MB, metavar="MB", help=f"upload limit ({MAX_UPLOAD_MB:g})"
    )
    app.add_argument("--dino-model", default=SimilaritySettings.dino_model, metavar="ID|DIR", help="DINOv2 model")
    app.add_argument(
        "--ir-model",
        default=SimilaritySettings.ir_model,
        metavar="ID|DIR|FILE.pth",
        help="IR model: CLIP, or the GUIE checkpoint file",
    )
    app.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    app.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bf16 on CUDA, fp32 elsewhere")
    app.add_argument("--library", metavar="DIR", help=LIBRARY_HELP)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def run(args: argparse.Namespace) -> None:
    """Load the models and serve the page until Ctrl-C.

    Raises:
        ValueError: Gradio is not installed (the message says what to install), or a bad setting.
    """
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    from siso.app.settings import AppSettings

    # Its checks (--max-upload-mb) come before Gradio is asked for, as the port's.
    settings = AppSettings(
        model=args.model,
        root=Path(args.root),
        device=args.device,
        dtype=args.dtype,
        similarity=SimilaritySettings(dino_model=args.dino_model, ir_model=args.ir_model),
        max_upload_mb=args.max_upload_mb,
        library=args.library,
    )
    try:
        from siso.app.ui import build_app
    except ImportError as err:
        if err.name in ("gradio", "pandas"):
            raise ValueError(f"siso app needs Gradio, which is not installed: {INSTALL}") from None
        raise
    from siso.app.studio import Studio

    print(f"siso: loading {args.model} (once; then the page starts)", file=sys.stderr)
    studio = Studio(settings)
    page = build_app(studio).queue(default_concurrency_limit=1)
    if not is_loopback(args.host):
        print(
            f"siso: warning: the app binds {args.host}: anyone who can reach this machine can use the models and "
            "download what is run here",
            file=sys.stderr,
        )
    print(f"siso: app at http://{args.host}:{args.port} (runs in {studio.root}); Ctrl-C stops it", file=sys.stderr)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=f"{settings.max_upload_mb:g}mb",
        allowed_paths=[str(studio.root)],
        show_error=True,
        quiet=True,
    )
