"""`siso.cli.subjects`: ``--subject`` starts a subject and the per-subject options that follow are its own."""

import argparse

import pytest

from siso.cli.subjects import add_subject_option, subject_specs
from siso.config import MAX_SUBJECTS


def _specs(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser()
    for flag in ("--subject", "--subject-class", "--box", "--mask"):
        add_subject_option(parser, flag)
    return subject_specs(parser.parse_args(argv))


def test_options_belong_to_the_subject_before_them():
    assert _specs([]) == []
    assert _specs(["--subject", "dog.png", "--box", "0,0,0.5,1", "--subject", "cat.png", "--subject-class", "cat"]) == [
        {"photo": "dog.png", "box": "0,0,0.5,1"},
        {"photo": "cat.png", "class": "cat"},
    ]
    # Options before the first --subject are the first subject's.
    assert _specs(["--box", "1,2,3,4", "--subject", "dog.png"]) == [{"box": "1,2,3,4", "photo": "dog.png"}]


def test_an_option_without_its_subject_is_refused():
    with pytest.raises(ValueError, match="--box given twice for subject 1: each --box belongs to the --subject"):
        _specs(["--subject", "dog.png", "--box", "1,2,3,4", "--box", "5,6,7,8"])
    with pytest.raises(ValueError, match="--subject-class belongs to a subject: give --subject PHOTO"):
        _specs(["--subject-class", "dog"])
    with pytest.raises(ValueError, match=f"{MAX_SUBJECTS + 1} subjects given; at most {MAX_SUBJECTS}"):
        _specs(["--subject", "a.png"] * (MAX_SUBJECTS + 1))
