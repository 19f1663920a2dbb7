"""`siso.eval.suites`: the DreamBench layout and the ImagenHub exports read as items, and their bad layouts."""

import pytest

from siso.eval.suites import SUITES, SuiteError, export_imagenhub_generation, load_dreambench, load_imagenhub_generation

from .helpers import _photo


def test_dreambench_items(dreambench):
    items = load_dreambench(dreambench)
    assert [i.id for i in items] == ["dog/00", "dog/01", "red_teapot/00", "red_teapot/01"]
    assert [i.prompt for i in items] == [
        "a dog in the snow",
        "a dog wearing a red hat",
        "a teapot in the jungle",
        "a red teapot",
    ]
    assert items[0].subject_image.name == "00.jpg" and len(items[0].references) == 2
    assert load_dreambench(dreambench / "dataset", unique_token="sks")[0].prompt == "a sks dog in the snow"


def test_dreambench_wrong_layout(tmp_path, dreambench):
    with pytest.raises(SuiteError, match="not a DreamBench folder.*prompts_and_classes.txt"):
        load_dreambench(tmp_path / "nothing")
    for photo in (dreambench / "dataset" / "red_teapot").iterdir():
        photo.unlink()
    with pytest.raises(SuiteError, match="'red_teapot' has no images"):
        load_dreambench(dreambench)
    (dreambench / "dataset" / "prompts_and_classes.txt").write_text("Classes\n\nPrompts\n")
    with pytest.raises(SuiteError, match="cannot parse"):
        load_dreambench(dreambench)


def test_imagenhub_generation_export_and_items(tmp_path):
    # Rows shaped like the HF datasets' (ImagenHub/Subject_Driven_Image_Generation eval, DreamBooth_Concepts train).
    concepts = [
        {"subject": "dog2", "image": _photo(1)},
        {"subject": "dog2", "image": _photo(2)},
        {"subject": "red_cartoon", "image": _photo(3)},
    ]
    rows = [
        {"uid": 0, "subject": "dog2", "prompt": "a <token> dog on the beach", "subject_id": 1},
        {"uid": 1, "subject": "red_cartoon", "prompt": "a <token> cartoon in the jungle", "subject_id": 2},
    ]
    root = export_imagenhub_generation(rows, concepts, tmp_path / "imagenhub")
    items = SUITES["imagenhub-generation"](root)
    assert [(i.id, i.class_name, i.prompt) for i in items] == [
        ("dog2/0", "dog", "a dog on the beach"),
        ("red_cartoon/1", "red cartoon", "a cartoon in the jungle"),
    ]
    assert len(items[0].references) == 2 and items[0].subject_image.name == "00.jpg"
    assert load_imagenhub_generation(root, unique_token="sks")[0].prompt == "a sks dog on the beach"
    with pytest.raises(SuiteError, match="not an imagenhub-generation export.*siso eval fetch"):
        load_imagenhub_generation(tmp_path)


def test_imagenhub_editing_items(editing_suite, tmp_path):
    items = SUITES["imagenhub-editing"](editing_suite)
    assert [(i.id, i.class_name, i.prompt) for i in items] == [
        ("duck_toy/3", "duck toy", "a photo of a duck toy"),
        ("duck_toy/4", "duck toy", "a photo of a duck toy"),
    ]
    assert items[0].input_image.name == "3.jpg" and items[0].mask.name == "3.png"
    with pytest.raises(SuiteError, match="not an imagenhub-editing export"):
        SUITES["imagenhub-editing"](tmp_path)
