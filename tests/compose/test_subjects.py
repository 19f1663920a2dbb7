"""`siso.compose.subjects`: a subject's photos and record, how many subjects compose one image, their terms' names."""

import pytest
from PIL import Image

from siso.compose import Box
from siso.compose.subjects import Subject, check_subjects, subject_names
from siso.config import MAX_SUBJECTS


def test_names_are_the_classes_numbered_when_they_repeat():
    assert subject_names(["dog", "cat"]) == ["dog", "cat"]
    assert subject_names(["dog", "Dog", "cat"]) == ["dog1", "dog2", "cat"]
    assert subject_names(["stuffed  animal", None]) == ["stuffed-animal", "subject2"]


def test_a_subject_holds_one_or_several_photos_and_says_what_config_json_keeps(subject):
    one = Subject(subject, "dog", Box(0, 0, 0.5, 1), path="dog.png")
    assert one.photos == [subject]
    assert one.record() == {"photo": "dog.png", "photos": ["dog.png"], "class": "dog", "box": str(Box(0, 0, 0.5, 1))}
    mirrored = subject.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    album = Subject([subject, mirrored], path="dog", files=["dog/a.png", "dog/b.png"])
    assert album.photos == [subject, mirrored]
    assert album.record() == {"photo": "dog", "photos": ["dog/a.png", "dog/b.png"], "class": None, "box": None}
    with pytest.raises(ValueError, match="a subject class must not be empty"):
        Subject(subject, " ")
    with pytest.raises(ValueError, match="a subject needs at least one photo"):
        Subject([])


def test_one_to_max_subjects_compose_an_image(subject):
    check_subjects([Subject(subject)] * MAX_SUBJECTS)
    with pytest.raises(ValueError, match="at least one subject is needed"):
        check_subjects([])
    with pytest.raises(ValueError, match=f"{MAX_SUBJECTS + 1} subjects given; at most {MAX_SUBJECTS}"):
        check_subjects([Subject(subject)] * (MAX_SUBJECTS + 1))
