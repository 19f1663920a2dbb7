"""The library of saved subjects (`siso.library`): save, list, use by name, remove; names, taken names, folders that
cannot be written, the nearest names in an error, and the model family check."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import platformdirs
import pytest
import torch
from safetensors.torch import save_file

from siso.library import RECORD_FILE, Library, LibraryError, check_family, check_name, default_root
from siso.lora import SUBJECT_FILE, WEIGHTS_FILE


def make_subject(folder: Path, photos: list[Path], model: str = "sdxl-turbo", value: float = 0.0, **info) -> Path:
    """A saved subject as `siso.lora.save_lora` lays it out (one tensor: the library reads only the header)."""
    folder.mkdir(parents=True)
    save_file({"unet.lora_A.weight": torch.full((2, 2), value)}, folder / WEIGHTS_FILE)
    record = {"model": model, "resolution": 512, "photos": [str(p) for p in photos], **info}
    (folder / SUBJECT_FILE).write_text(json.dumps(record))
    (folder / "ip_adapter_image.png").write_bytes(b"png")
    return folder


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "dog.jpg"
    path.write_bytes(b"a photo")
    return path


@pytest.fixture
def subject(tmp_path, photo) -> Path:
    return make_subject(tmp_path / "run" / "lora", [photo, tmp_path / "gone.jpg"])


def test_round_trip(tmp_path, subject):
    library = Library(tmp_path / "lib")
    assert library.names() == [] and library.entries() == []
    path = library.save(subject, "dog")
    assert path == tmp_path / "lib" / "dog" and library.names() == ["dog"]
    for name in (WEIGHTS_FILE, SUBJECT_FILE, "ip_adapter_image.png"):
        assert (path / name).read_bytes() == (subject / name).read_bytes()
    assert [p.name for p in (path / "photos").iterdir()] == ["dog.jpg"]  # gone.jpg no longer exists
    assert (path / "photos" / "dog.jpg").read_bytes() == b"a photo"
    record = json.loads((path / RECORD_FILE).read_text())
    assert record["name"] == "dog" and record["photos"] == ["dog.jpg"] and record["family"] == "sdxl-turbo"
    (entry,) = library.entries()
    assert (entry.name, entry.path, entry.family, entry.photos) == ("dog", path, "sdxl-turbo", 1)
    assert entry.size == sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert datetime.now(UTC) - entry.saved < timedelta(minutes=1)
    assert library.resolve("dog") == path
    assert library.resolve(subject) == subject  # a folder is used as it is
    library.remove("dog")
    assert library.names() == [] and not path.exists() and list((tmp_path / "lib").iterdir()) == []


def test_photos_of_a_composed_subject_and_of_an_entry_saved_again(tmp_path, photo):
    other = tmp_path / "other" / "dog.jpg"  # the same file name as the first subject's photo
    other.parent.mkdir()
    other.write_bytes(b"another photo")
    subjects = [{"photos": [str(photo)]}, {"photos": [str(other)]}]
    folder = make_subject(tmp_path / "lora", [], subjects=subjects)
    library = Library(tmp_path / "lib")
    first = library.save(folder, "pair")
    assert sorted(p.name for p in (first / "photos").iterdir()) == ["dog-1.jpg", "dog.jpg"]
    assert (first / "photos" / "dog-1.jpg").read_bytes() == b"another photo"
    photo.unlink()
    other.unlink()
    again = library.save(first, "pair2")  # the entry's own copies, the originals being gone
    assert sorted(p.name for p in (again / "photos").iterdir()) == ["dog-1.jpg", "dog.jpg"]
    assert library.entries()[1].photos == 2


def test_a_composed_subject_folder(tmp_path, photo):
    composed = tmp_path / "composed"
    for k in (1, 2):
        make_subject(composed / f"subject{k}", [])
        (composed / f"subject{k}" / "photos").mkdir()
        (composed / f"subject{k}" / "photos" / "00.png").write_bytes(b"photo %d" % k)
    record = [{"folder": f"subject{k}", "name": f"s{k}", "box": "0,0,1,1"} for k in (1, 2)]
    (composed / SUBJECT_FILE).write_text(json.dumps({"model": "sd-turbo", "composed": record}))
    library = Library(tmp_path / "lib")
    entry = library.save(composed, "pair")
    assert (entry / "subject2" / WEIGHTS_FILE).is_file() and (entry / "subject2" / "photos" / "00.png").is_file()
    assert sorted(p.name for p in (entry / "photos").iterdir()) == ["00-1.png", "00.png"]
    assert (library.entries()[0].family, library.entries()[0].photos) == ("sd-turbo", 2)
    (composed / "subject2" / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="subject2 has no pytorch_lora_weights.safetensors"):
        library.save(composed, "broken")
    assert library.names() == ["pair"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "it is empty"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        (".", "names a folder"),
        ("..", "names a folder"),
        (".dog", "starts with a dot"),
        ("d" * 101, "longer than 100 characters"),
        ("dog\nname", "control character"),
        (" dog", "starts or ends with a space"),
    ],
)
def test_names_must_be_plain_file_names(tmp_path, subject, name, reason):
    with pytest.raises(LibraryError, match=reason) as error:
        Library(tmp_path / "lib").save(subject, name)
    assert "is not a plain file name" in str(error.value) and "\n" not in str(error.value).replace(repr(name), "")
    assert not (tmp_path / "lib").exists()


def test_good_names():
    for name in ("dog", "my dog 2", "Dög_v1.5", "d" * 100):
        assert check_name(name) == name


def test_a_taken_name_is_refused_unless_overwrite(tmp_path, photo):
    library = Library(tmp_path / "lib")
    library.save(make_subject(tmp_path / "a", [photo], value=1.0), "dog")
    second = make_subject(tmp_path / "b", [photo], value=2.0)
    with pytest.raises(LibraryError, match="already has a subject named dog; pass --overwrite"):
        library.save(second, "dog")
    assert (tmp_path / "lib" / "dog" / WEIGHTS_FILE).read_bytes() == (tmp_path / "a" / WEIGHTS_FILE).read_bytes()
    library.save(second, "dog", overwrite=True)
    assert (tmp_path / "lib" / "dog" / WEIGHTS_FILE).read_bytes() == (second / WEIGHTS_FILE).read_bytes()
    assert library.names() == ["dog"] and sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["dog"]
    library.save(tmp_path / "lib" / "dog", "dog", overwrite=True)  # an entry saved over itself stays whole
    assert (tmp_path / "lib" / "dog" / "photos" / "dog.jpg").is_file()


def test_a_folder_that_is_no_saved_subject_is_never_replaced(tmp_path, subject):
    (tmp_path / "lib" / "notes").mkdir(parents=True)
    with pytest.raises(LibraryError, match="is no saved subject; pick another name"):
        Library(tmp_path / "lib").save(subject, "notes", overwrite=True)
    assert (tmp_path / "lib" / "notes").is_dir()


@pytest.mark.parametrize("where", ["lib", "lib/below"])
def test_a_library_that_cannot_be_written(tmp_path, subject, where):
    (tmp_path / "lib").write_text("a file where the folder should be")
    with pytest.raises(LibraryError) as error:
        Library(tmp_path / where).save(subject, "dog")
    message = str(error.value)
    assert f"cannot write the subject library {tmp_path / where}: {tmp_path / 'lib'} is a file" in message
    assert "pass --library DIR or set SISO_LIBRARY" in message
    assert (tmp_path / "lib").read_text() == "a file where the folder should be"


def test_unknown_names_list_the_nearest(tmp_path, subject):
    library = Library(tmp_path / "lib")
    for name in ("dog", "dog2", "cat"):
        library.save(subject, name)
    with pytest.raises(LibraryError) as error:
        library.resolve("dgo")
    assert str(error.value) == (
        f"'dgo' is neither a subject folder nor a subject in the subject library {tmp_path / 'lib'} (nearest: dog); "
        "`siso subjects` lists them"
    )
    with pytest.raises(LibraryError, match=r"'dogs' is not a subject in .* \(nearest: dog, dog2\)"):
        library.remove("dogs")
    with pytest.raises(LibraryError, match="'zebra' is not a subject in the subject library [^(]*; `siso subjects`"):
        library.remove("zebra")
    assert library.names() == ["cat", "dog", "dog2"]


def test_a_damaged_record_is_named(tmp_path, subject):
    library = Library(tmp_path / "lib")
    (library.save(subject, "dog") / RECORD_FILE).write_text("{")
    with pytest.raises(LibraryError, match=f"{tmp_path / 'lib' / 'dog' / RECORD_FILE} is damaged .* remove dog"):
        library.entries()


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SISO_LIBRARY", str(tmp_path / "mine"))
    assert default_root() == tmp_path / "mine" and Library().root == tmp_path / "mine"
    monkeypatch.delenv("SISO_LIBRARY")
    assert default_root() == Path(platformdirs.user_data_dir("siso")) / "subjects"  # (only named, never touched)


def test_check_family(tmp_path, photo, model_dirs):
    folder = make_subject(tmp_path / "lora", [photo])  # learned on sdxl-turbo
    check_family(folder, "sdxl-turbo")
    check_family(folder, str(model_dirs["sdxl"]))  # another model of the family
    check_family(folder, "/nonexistent/model")  # its error comes when it loads
    with pytest.raises(LibraryError) as error:
        check_family(folder, "flux-schnell")
    assert str(error.value).startswith(
        f"{folder} was learned on sdxl-turbo (SDXL family); flux-schnell is of the Flux family: draw it with a SDXL "
        "model (without --model: sdxl-turbo), or learn the subject again on flux-schnell"
    )
    entry = Library(tmp_path / "lib").save(folder, "dog")
    with pytest.raises(LibraryError, match=r"^dog was learned on sdxl-turbo \(SDXL family\); .* is of the SD family"):
        check_family(entry, str(model_dirs["sd"]))
    check_family(make_subject(tmp_path / "unknown", [photo], model="/gone/model"), "flux-schnell")


def test_a_library_that_is_a_file_is_named_when_read(tmp_path):
    (tmp_path / "lib").write_text("a file where the folder should be")
    for read in (Library(tmp_path / "lib").names, Library(tmp_path / "lib").entries):
        with pytest.raises(LibraryError, match=f"the subject library {tmp_path / 'lib'} is a file, not a folder"):
            read()
