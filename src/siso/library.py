"""A library of saved subjects: named copies of subject folders (`siso.lora.save_lora`'s), kept in one folder so that
a subject learned once is drawn by name (``siso generate --lora dog``).

Layout of a library folder::

    NAME/                        one subject
        pytorch_lora_weights.safetensors, siso_subject.json, ip_adapter_image*.png    a copy of its subject folder
                                 (of a composed one: siso_subject.json and a folder per subject)
        photos/                  copies of the photos it was learned from (those that still existed)
        siso_library.json        its name, when it was saved, its model and model family, its photos' files

The library folder is `default_root` (``$SISO_LIBRARY``, else ``siso/subjects`` in the user data folder) unless the
caller names another. A subject appears whole or not at all (`siso.io.atomic_folder`).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import platformdirs

from siso.backbones import BACKBONES, family
from siso.compose.saved import read_saved
from siso.io import atomic_folder, write_json
from siso.lora import read_subject_info

__all__ = ["Entry", "Library", "LibraryError", "check_family", "check_name", "default_root"]

LIBRARY_ENV = "SISO_LIBRARY"
RECORD_FILE = "siso_library.json"
PHOTOS_FOLDER = "photos"
MAX_NAME_LENGTH = 100
MOVE_IT = f"pass --library DIR or set {LIBRARY_ENV} to a folder you can write"


class LibraryError(ValueError):
    """A subject name or library folder that cannot be used; the message says why and what to do, in one line."""


def default_root() -> Path:
    """The library folder: ``$SISO_LIBRARY`` when set, else ``subjects`` in siso's user data folder
    (``~/.local/share/siso/subjects`` on Linux)."""
    given = os.environ.get(LIBRARY_ENV)
    return Path(given).expanduser() if given else Path(platformdirs.user_data_dir("siso")) / "subjects"


def check_name(name: str) -> str:
    """Return ``name`` if it can name a subject: a plain file name (not empty, no path separator, not ``.`` or
    ``..``, no leading dot, no control character or surrounding space, at most `MAX_NAME_LENGTH` characters).

    Raises:
        LibraryError: naming what is wrong with it.
    """
    if not name:
        reason = "it is empty"
    elif any(sep in name for sep in ("/", "\\", os.sep, os.altsep) if sep):
        reason = "it holds a path separator"
    elif name in (".", ".."):
        reason = "it names a folder"
    elif name.startswith("."):
        reason = "it starts with a dot (a hidden file)"
    elif len(name) > MAX_NAME_LENGTH:
        reason = f"it is longer than {MAX_NAME_LENGTH} characters"
    elif not name.isprintable() or name != name.strip():
        reason = "it holds a control character or starts or ends with a space"
    else:
        return name
    raise LibraryError(f"subject name {name!r} is not a plain file name: {reason}; use e.g. my-dog")


def _family_label(model: str | None) -> str | None:
    """The family of ``model`` as its first backbone name in `BACKBONES` (``sdxl-turbo``); the model itself when it
    cannot be resolved."""
    cls = None if model is None else family(model)
    return model if cls is None else next(name for name, (_, c, _) in BACKBONES.items() if c is cls)


@dataclass(frozen=True)
class Entry:
    """A subject of the library, as `Library.entries` lists it.

    Attributes:
        name: Its name.
        path: Its folder (a saved subject that ``--lora`` and `siso.lora.load_saved_subject` take).
        family: The model family it was learned on, as a backbone name of that family (``sdxl-turbo``); the model it
            was learned on when that is of no known family; ``None`` when its subject folder names no model.
        photos: How many of its photos the library keeps.
        size: Bytes on disk.
        saved: When it was saved.
    """

    name: str
    path: Path
    family: str | None
    photos: int
    size: int
    saved: datetime


class Library:
    """A folder of named saved subjects (the layout is in this module's docstring).

    Args:
        root: The library folder; ``None``: `default_root`. It is created at the first save.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = default_root() if root is None else Path(root).expanduser()

    def names(self) -> list[str]:
        """The names of the saved subjects, sorted.

        Raises:
            LibraryError: the library folder is a file.
        """
        if self.root.exists() and not self.root.is_dir():
            raise LibraryError(f"the subject library {self.root} is a file, not a folder; {MOVE_IT}")
        if not self.root.is_dir():
            return []
        found = (p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / RECORD_FILE).is_file())
        return sorted(found)

    def check_writable(self) -> None:
        """Check that the library folder is one, or can be made one, and can be written.

        Raises:
            LibraryError: naming the folder, what is in the way, and how to move the library.
        """
        root = self.root.absolute()
        parent = next(p for p in (root, *root.parents) if p.exists())
        if not parent.is_dir():
            reason = f"{parent} is a file"
        elif not os.access(parent, os.W_OK | os.X_OK):
            reason = f"{parent} is not writable"
        else:
            return
        raise LibraryError(f"cannot write the subject library {root}: {reason}; {MOVE_IT}")

    def check_free(self, name: str, overwrite: bool = False) -> Path:
        """Check, before any slow work, that a subject can be saved as ``name``; returns the folder it would take.

        Raises:
            LibraryError: ``name`` is not a plain file name (`check_name`), the library cannot be written
                (`check_writable`), or ``name`` is taken and not ``overwrite`` (or is something other than a saved
                subject, which is never replaced).
        """
        path = self.root / check_name(name)
        self.check_writable()
        if path.exists() and not (path / RECORD_FILE).is_file():
            raise LibraryError(f"{path} is in the subject library but is no saved subject; pick another name")
        if path.exists() and not overwrite:
            taken = f"the subject library {self.root} already has a subject named {name}"
            raise LibraryError(f"{taken}; pass --overwrite to replace it, or pick another name")
        return path

    def save(
        self, folder: str | Path, name: str, overwrite: bool = False, photos: Sequence[str | Path] | None = None
    ) -> Path:
        """Save a copy of the subject folder ``folder`` under ``name``, with copies of its photos.

        Args:
            folder: A saved subject: a run's ``lora/`` folder (`siso.lora.save_lora`'s, or a composed one), or a
                library entry.
            name: The name to save it under (`check_name`).
            overwrite: Replace a subject of that name.
            photos: The subject's photo files; ``None``: those its ``siso_subject.json`` names (``photos``, or those
                of each subject learned together), a composed folder's subjects' copies, or a library entry's own
                copies. Files that no longer exist are left out.

        Returns:
            The subject's folder in the library.

        Raises:
            LibraryError: as `check_free`, or the library could not be written.
            FileNotFoundError, siso.lora.LoraError: ``folder`` is no usable saved subject
                (`siso.compose.saved.read_saved`: its weights, or each subject's of a composed one, or a damaged
                composed record).
        """
        path = self.check_free(name, overwrite)
        folder = Path(folder)
        info = read_subject_info(folder)
        # Every subject's weights checked; a composed folder keeps each subject's in its own folder.
        parts = [subject.folder for subject in read_saved(folder)]
        if photos is None and (folder / RECORD_FILE).is_file():
            photos = sorted((folder / PHOTOS_FOLDER).glob("*"))
        elif photos is None and "composed" in info:
            photos = [photo for part in parts for photo in sorted((part / PHOTOS_FOLDER).glob("*"))]
        elif photos is None:
            subjects = info.get("subjects") or [info]
            photos = [photo for subject in subjects for photo in subject.get("photos", [])]
        saved, model = datetime.now(UTC).isoformat(timespec="seconds"), info.get("model")
        record = {"name": name, "saved": saved, "model": model, "family": _family_label(model), "photos": []}

        def own_files(where: str, names: list[str]) -> set[str]:  # the library's files of an entry saved again
            return {RECORD_FILE, PHOTOS_FOLDER} & set(names) if Path(where) == folder else set()

        try:
            with atomic_folder(path) as partial:
                shutil.copytree(folder, partial, ignore=own_files, dirs_exist_ok=True)
                (partial / PHOTOS_FOLDER).mkdir()
                for photo in (Path(p) for p in photos if p):  # (a photo given as an image has no file)
                    if not photo.is_file():
                        continue
                    target = partial / PHOTOS_FOLDER / photo.name
                    if target.exists():  # photos of several subjects with the same file name
                        target = target.with_stem(f"{photo.stem}-{len(record['photos'])}")
                    shutil.copyfile(photo, target)
                    record["photos"].append(target.name)
                write_json(partial / RECORD_FILE, record)
        except OSError as err:
            raise LibraryError(f"cannot save {name} in the subject library {self.root} ({err}); {MOVE_IT}") from None
        return path

    def _unknown(self, given: str, what: str) -> LibraryError:
        close = difflib.get_close_matches(given, self.names(), n=3)
        nearest = f" (nearest: {', '.join(close)})" if close else ""
        return LibraryError(f"{given!r} is {what} the subject library {self.root}{nearest}; `siso subjects` lists them")

    def resolve(self, name_or_folder: str | Path) -> Path:
        """The saved subject ``name_or_folder`` means: an existing folder as it is, else the library's subject of
        that name.

        Raises:
            LibraryError: neither; the message lists the nearest names.
        """
        given = Path(name_or_folder).expanduser()
        if given.is_dir():
            return given
        if str(name_or_folder) in self.names():
            return self.root / str(name_or_folder)
        raise self._unknown(str(name_or_folder), "neither a subject folder nor a subject in")

    def entries(self) -> list[Entry]:
        """Every saved subject, by name.

        Raises:
            LibraryError: a subject's ``siso_library.json`` is damaged.
        """
        rows = []
        for name in self.names():
            path = self.root / name
            record = _read_record(path)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            photos = sum(p.is_file() for p in (path / PHOTOS_FOLDER).glob("*"))
            rows.append(Entry(name, path, record["family"], photos, size, record["saved"]))
        return rows

    def remove(self, name: str) -> None:
        """Remove the saved subject ``name``; it leaves the library at once (renamed away, then deleted).

        Raises:
            LibraryError: no subject of that name (the message lists the nearest names), or it cannot be removed.
        """
        if name not in self.names():
            raise self._unknown(name, "not a subject in")
        path = self.root / name
        removed = path.with_name(f".{name}.removed")
        try:
            shutil.rmtree(removed, ignore_errors=True)
            os.replace(path, removed)
            shutil.rmtree(removed)
        except OSError as err:
            raise LibraryError(f"cannot remove {name} from the subject library {self.root} ({err})") from None


def _read_record(path: Path) -> dict:
    """A library entry's ``siso_library.json``, with the fields `Library.entries` shows.

    Raises:
        LibraryError: the file is damaged.
    """
    try:
        record = json.loads((path / RECORD_FILE).read_bytes())
        record = {**record, "saved": datetime.fromisoformat(record["saved"]), "family": record["family"]}
    except (ValueError, TypeError, KeyError) as err:
        raise LibraryError(
            f"{path / RECORD_FILE} is damaged ({err}); restore it, or remove the subject (siso subjects remove "
            f"{path.name})"
        ) from None
    return record


def check_family(folder: str | Path, model: str) -> None:
    """Refuse to draw the saved subject ``folder`` with ``model`` when it was learned on a model of another family;
    another model of the same family (another Hub id or folder) passes, as does a subject or model whose family
    cannot be told (its error comes when it loads).

    Raises:
        LibraryError: naming the subject's model and family and ``model``'s family.
        siso.lora.LoraError: the subject's ``siso_subject.json`` is damaged.
    """
    folder = Path(folder)
    learned = read_subject_info(folder).get("model")
    if learned is None:
        return
    entry = (folder / RECORD_FILE).is_file()
    subject_family = family(_read_record(folder)["family"] or learned) if entry else family(learned)
    model_family = family(model)
    if subject_family is None or model_family is None or subject_family is model_family:
        return
    kind = subject_family.__name__.removesuffix("Backbone")
    raise LibraryError(
        f"{folder.name if entry else folder} was learned on {learned} ({kind} family); {model} is of the "
        f"{model_family.__name__.removesuffix('Backbone')} family: draw it with a {kind} model (without --model: "
        f"{learned}), or learn the subject again on {model}"
    )
