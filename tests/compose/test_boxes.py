"""Boxes, subjects and their names, and the per-subject options of the command line."""

import argparse

import pytest

from siso.cli.subjects import add_subject_option, subject_specs
from siso.compose import Box, BoxError, default_slots, iou, subject_names


def test_a_box_is_pixels_or_fractions_of_the_sides():
    assert Box.parse("0,0,1,1").fractional and Box.parse("0,0,1,1").pixels(64, 32) == (0, 0, 64, 32)
    assert Box.parse("0.5,0,1,0.5").pixels(64, 64) == (32, 0, 64, 32)
    assert not Box.parse("0,0,2,1").fractional and Box.parse("0,0,2,1").pixels(64, 64) == (0, 0, 2, 1)
    assert Box.parse("1.5,2.5,10.2,20").pixels(64, 64) == (1, 2, 11, 20)  # every pixel it touches
    assert Box.parse("0.5,0.5,0.501,0.501").pixels(8, 8) == (4, 4, 5, 5)  # at least one pixel
    assert Box.parse("0,0,1,1").covers(32, 32) and not Box.parse("0,0,0.5,1").covers(32, 32)
    assert str(Box.parse("0.5,0,1,1")) == "0.5,0,1,1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "is not 4 numbers"),
        ("a,b,c,d", "is not 4 numbers"),
        ("0,0,nan,1", "non-finite"),
        ("0,0,inf,1", "non-finite"),
        ("0,0,0,1", "is empty"),
        ("0.6,0,0.4,1", "is empty"),
        ("-1,0,10,10", "negative corner"),
    ],
)
def test_bad_boxes(text, message):
    with pytest.raises(BoxError, match=message):
        Box.parse(text)


def test_a_pixel_box_outside_the_image_is_refused():
    with pytest.raises(BoxError, match="reaches outside the 32x32 image"):
        Box.parse("0,0,40,20").pixels(32, 32)


def test_default_slots_and_iou():
    assert [str(b) for b in default_slots(2)] == ["0,0.1,0.5,0.9", "0.5,0.1,1,0.9"]
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_names_are_classes_numbered_when_they_repeat():
    assert subject_names(["dog", "cat"]) == ["dog", "cat"]
    assert subject_names(["dog", "Dog", None]) == ["dog1", "dog2", "subject3"]
    assert subject_names(["teddy bear"]) == ["teddy-bear"]


def _parse(argv):
    parser = argparse.ArgumentParser()
    for flag in ("--subject", "--subject-class", "--box", "--mask"):
        add_subject_option(parser, flag)
    return subject_specs(parser.parse_args(argv))


def test_each_option_belongs_to_the_subject_before_it():
    specs = _parse(["--subject", "a.png", "--box", "1,2,3,4", "--subject", "b.png", "--subject-class", "cat"])
    assert specs == [{"photo": "a.png", "box": "1,2,3,4"}, {"photo": "b.png", "class": "cat"}]
    assert _parse(["--box", "1,2,3,4", "--subject", "a.png"]) == [{"photo": "a.png", "box": "1,2,3,4"}]
    assert _parse([]) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subject", "a", "--box", "1,2,3,4", "--box", "1,2,3,4"], "--box given twice for subject 1"),
        (["--subject-class", "dog", "--subject", "a", "--subject-class", "cat"], "--subject-class given twice"),
        (["--box", "1,2,3,4"], "--box belongs to a subject: give --subject PHOTO"),
        ([arg for k in range(5) for arg in ("--subject", f"{k}.png")], "5 subjects given; at most 4"),
    ],
)
def test_more_options_than_subjects(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(argv)
