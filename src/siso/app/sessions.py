"""Where the app writes: a folder per browser session under one root, never elsewhere; in it a new folder per run, the
uploads, and the zips a page offers for download."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from siso.app.uploads import UploadError
from siso.runs.folder import RunFolder


class Sessions:
    """The session folders under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    def folder(self, session: str) -> Path:
        """``root/<session>``: the session id cleaned to letters, digits, - and _ (never a path elsewhere)."""
        name = re.sub(r"[^A-Za-z0-9_-]", "", session or "")[:64] or "anonymous"
        folder = self.root / name
        if folder.resolve().parent != self.root.resolve():
            raise UploadError("bad session")  # not reachable with the cleaning above; kept as the rule
        return folder

    def new_run(self, session: str, kind: str) -> RunFolder:
        """A new run folder ``<session>/<kind>-<time>`` (``-1``, ``-2``, ... for runs in the same second)."""
        folder = self.folder(session)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in range(1000):
            path = folder / f"{kind}-{stamp}" if n == 0 else folder / f"{kind}-{stamp}-{n}"
            if not path.exists():
                return RunFolder(path)
        raise UploadError("too many runs this second")

    def new_upload(self, session: str, kind: str) -> Path:
        """Where an upload is unpacked: ``<session>/uploads/<kind>-<time>`` (not created here)."""
        return self.folder(session) / "uploads" / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"

    def downloads(self, session: str, run: Path) -> tuple[str, str]:
        """Zip a finished run for download into ``<session>/downloads/``: its ``lora/`` folder, then all of it."""
        downloads = self.folder(session) / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        lora_zip = shutil.make_archive(str(downloads / f"{run.name}-lora"), "zip", run / "lora")
        return lora_zip, shutil.make_archive(str(downloads / run.name), "zip", run)
