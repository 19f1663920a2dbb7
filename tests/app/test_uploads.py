"""`siso.app.uploads`: every upload and field the page sends is checked, with one readable line and no run
folder for a bad one."""

import zipfile

import pytest
from PIL import Image

from siso.app.studio import AppSettings, UploadError, check_upload, train_prompt_for
from siso.app.uploads import upload_subject


def test_check_upload_gives_readable_messages(tmp_path, subject_path):
    settings = AppSettings(root=tmp_path)
    assert check_upload(subject_path, settings, "subject photo").size == (96, 72)
    with pytest.raises(UploadError, match="upload a subject photo first"):
        check_upload(None, settings, "subject photo")
    with pytest.raises(UploadError, match=r"is 0\.0 MB; the limit is 1e-06 MB"):
        check_upload(subject_path, AppSettings(root=tmp_path, max_upload_mb=1e-6), "subject photo")
    with pytest.raises(UploadError, match="has 0.0 megapixels; the limit is 0.005"):
        check_upload(subject_path, AppSettings(root=tmp_path, max_pixels=5000), "subject photo")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UploadError, match="notes.png is not an image") as err:
        check_upload(text, settings, "subject photo")
    assert str(tmp_path) not in str(err.value)  # the page does not show server paths


def test_train_prompt_from_the_class():
    assert train_prompt_for(" a photo of sks ", "dog") == "a photo of sks"
    assert train_prompt_for("", " dog ") == "a photo of a dog"
    with pytest.raises(UploadError, match="type a train prompt"):
        train_prompt_for(" ", "")


def test_two_subjects_need_a_class_and_boxes(studio, subject_path):
    """Bad input for a composed run: one line each, and no run folder."""
    side = studio.backbone.resolution
    cat = {"second_path": subject_path, "second_class": "cat"}
    refusals = {
        "the subject's box: box '1,2,3' is not 4 numbers": {"box": "1,2,3"},
        "the subject's box: box 0,0,0,1 is empty": {"box": "0,0,0,1"},
        f"the subject's box: box 0,0,{side},{side + 1} reaches outside the {side}x{side} image": {
            "box": f"0,0,{side},{side + 1}"
        },
        "upload the second subject's photo, or clear its class and box": {"second_box": "0.5,0,1,1"},
        "type the second subject's class": {"box": "0,0,0.5,1", "second_path": subject_path},
        "give the second subject its box": cat,
        "with two subjects, give each its box": {**cat, "second_box": "0.5,0,1,1"},
        "the second subject's box: box '1' is not 4 numbers": {"box": "0,0,1,1", **cat, "second_box": "1"},
    }
    for message, fields in refusals.items():
        with pytest.raises(UploadError, match=message):
            next(studio.learn("composer", subject_path, "a photo", **fields))
    two = {"box": "0,0,0.5,1", "second_path": subject_path, "second_class": "cat", "second_box": "0.5,0,1,1"}
    with pytest.raises(UploadError, match="type a train prompt, or each subject's class"):
        next(studio.learn("composer", subject_path, "", "", **two))
    assert not (studio.root / "composer").exists()
    assert train_prompt_for("", "dog", " cat ") == "a photo of a dog and a cat"


def test_every_photo_is_checked_and_named(studio, album, tmp_path):
    """One bad photo among several: one line naming it, and no run folder."""
    broken = tmp_path / "notes.png"
    broken.write_text("not an image")
    with pytest.raises(UploadError, match="subject photo notes.png is not an image") as err:
        next(studio.learn("album-refusals", [*album, broken], "a photo of a dog"))
    assert str(tmp_path) not in str(err.value)
    with pytest.raises(UploadError, match="second subject photo notes.png is not an image"):
        next(studio.learn("album-refusals", album, "", "dog", box="0,0,0.5,1", second_path=[album[0], broken],
                          second_class="cat", second_box="0.5,0,1,1"))  # fmt: skip
    with pytest.raises(UploadError, match="11 photos of one subject; at most 10"):
        next(studio.learn("album-refusals", album * 5 + [broken], "a photo of a dog"))
    with pytest.raises(UploadError, match="upload a subject photo first"):
        next(studio.learn("album-refusals", [], "a photo of a dog"))
    assert not (studio.root / "album-refusals").exists()
    # The limits hold for each photo.
    large = tmp_path / "large.png"
    Image.new("RGB", (128, 128)).save(large)
    settings = AppSettings(root=tmp_path, max_pixels=10_000)
    with pytest.raises(UploadError, match="the subject photo large.png has 0.0 megapixels; the limit is 0.01"):
        upload_subject([*album, large], settings, "subject photo", "dog")
    megabyte = AppSettings(root=tmp_path, max_upload_mb=1e-6)
    with pytest.raises(UploadError, match=r"the subject photo front.png is 0\.0 MB; the limit is 1e-06 MB"):
        upload_subject(album, megabyte, "subject photo", "dog")


def test_bad_subject_zips_are_refused(studio, tmp_path):
    not_zip = tmp_path / "subject.zip"
    not_zip.write_text("no")
    with pytest.raises(UploadError, match="subject.zip is not a zip file"):
        studio.subject_from_zip("zips", not_zip)
    escape = tmp_path / "escape.zip"
    with zipfile.ZipFile(escape, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(UploadError, match="a path outside its folder"):
        studio.subject_from_zip("zips", escape)
    assert not (studio.root / "zips" / "outside.txt").exists()
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "x")
    with pytest.raises(UploadError, match="must hold one LoRA folder"):
        studio.subject_from_zip("zips", empty)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("lora/pytorch_lora_weights.safetensors", b"")
    with pytest.raises(UploadError, match="damaged.zip"):
        studio.subject_from_zip("zips", damaged)


def test_bad_fields_are_refused_before_any_work(studio, subject_path):
    with pytest.raises(UploadError, match="max iterations must be 1 to 1000"):
        next(studio.learn("fields", subject_path, "a dog", max_iters=0))
    with pytest.raises(UploadError, match="lr"):
        next(studio.learn("fields", subject_path, "a dog", lr=-1.0))
    with pytest.raises(UploadError, match="max iterations is empty"):  # a field the page left empty
        next(studio.learn("fields", subject_path, "a dog", max_iters=None))
    with pytest.raises(UploadError, match="seed must be a whole number, got 1.5"):
        next(studio.learn("fields", subject_path, "a dog", seed=1.5))
    with pytest.raises(UploadError, match="number of images is empty"):
        studio.generate("fields", "a dog", num_images=None)
    assert not (studio.root / "fields").exists()
