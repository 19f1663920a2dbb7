"""Subject photos of every shape and format either load correctly or fail with one clear message."""

import numpy as np
import pytest
from PIL import Image

from siso.images import ImageError, contact_sheet, load_photos, load_subject, loss_plot, pil_to_tensor, tensor_to_pil


def _photo(w=96, h=64) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx * 2, yy * 3, 200 - xx], -1).clip(0, 255).astype(np.uint8))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_subject(tmp_path / "nope.jpg")


def test_directory_is_not_a_photo(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_subject(tmp_path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    _photo().save(path)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", deny)  # root ignores file modes, so simulate what open() raises
    with pytest.raises(ImageError, match="permission denied"):
        load_subject(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageError, match="is not an image"):
        load_subject(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_subject(path)


def test_tiny_image(tmp_path):
    path = tmp_path / "tiny.png"
    _photo(200, 40).save(path)
    with pytest.raises(ImageError, match="200x40 px; at least 64"):
        load_subject(path)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 32:, 3] = 255  # left half fully transparent, right half opaque red
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = load_subject(path)
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255) and img.getpixel((60, 5)) == (255, 0, 0)


def test_grayscale_and_palette_and_cmyk(tmp_path):
    photo = _photo()
    for mode, fmt in (("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("LA", "PNG")):
        path = tmp_path / f"{mode}.{fmt.lower()}"
        photo.convert(mode).save(path, fmt)
        img = load_subject(path)
        assert img.mode == "RGB" and img.size == photo.size, mode


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = np.asarray(load_subject(path))
    assert img.min() == 0 and img.max() == 255
    assert 100 < img[32, 32, 0] < 155  # mid-grey in the middle, not white


def test_exif_rotation_is_applied(tmp_path):
    photo = _photo(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    photo.save(path, "JPEG", exif=exif, quality=95)
    img = load_subject(path)
    assert img.size == (64, 96)


def test_non_square_keeps_its_aspect_ratio(tmp_path):
    path = tmp_path / "wide.png"
    _photo(160, 80).save(path)
    assert load_subject(path).size == (160, 80)  # the similarity networks centre-crop it (documented)


def test_tensor_round_trip():
    photo = _photo()
    assert np.array_equal(np.asarray(tensor_to_pil(pil_to_tensor(photo))[0]), np.asarray(photo))


def test_contact_sheet_and_loss_plot():
    sheet = contact_sheet([_photo()] * 10, [str(i) for i in range(10)], thumb=32)
    assert sheet.size == (8 * 32, 2 * (32 + 14))
    plot = loss_plot({"loss": [1.0, 0.5, float("nan"), 0.4], "dino": [0.5, 0.3, 0.2, 0.1]}, best_iteration=3)
    assert plot.size == (640, 360) and len(set(plot.getdata())) > 3


def test_load_photos_of_a_file_and_of_a_folder(tmp_path):
    _photo().save(tmp_path / "one.png")
    photos, files = load_photos(tmp_path / "one.png")
    assert len(photos) == 1 and files == [str(tmp_path / "one.png")]
    folder = tmp_path / "dog"
    folder.mkdir()
    _photo(80, 80).save(folder / "b.JPG")
    _photo().save(folder / "a.png")
    (folder / "notes.txt").write_text("not a photo")
    _photo().save(folder / ".hidden.png")
    (folder / "sub.png").mkdir()  # a folder named like a photo is not one
    photos, files = load_photos(folder)
    assert files == [str(folder / "a.png"), str(folder / "b.JPG")]  # name order; other files left alone
    assert [p.size for p in photos] == [(96, 64), (80, 80)] and all(p.mode == "RGB" for p in photos)


def test_load_photos_of_an_empty_folder_or_a_broken_photo_names_it(tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(ImageError, match=f"subject folder {tmp_path} holds no photo"):
        load_photos(tmp_path)
    _photo().save(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match=f"{tmp_path / 'b.jpg'}"):
        load_photos(tmp_path)
