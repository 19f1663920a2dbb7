"""`siso.app.progress`: what the page shows of a run: captioned iteration images, identity terms, photo counts, a
refine's similarity before and after."""

from PIL import Image

from siso.app.progress import frames, identities, photo_counts, similarity
from siso.compose import Subject


def test_frames_are_captioned_with_their_loss_and_the_best_marked(tmp_path):
    (tmp_path / "iterations").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "iterations" / f"{i:04d}.png")
    shown = frames(tmp_path, [0.5, 0.25], best=1)
    assert [caption for _, caption in shown] == ["0: 0.5000", "1: 0.2500 (best)", "2"]  # iteration 2: no loss yet
    assert [path for path, _ in shown] == [str(tmp_path / "iterations" / f"{i:04d}.png") for i in range(3)]


def test_identity_terms_and_photo_counts(subject):
    assert (
        identities({"loss": 1.0, "identity/dog": 0.41234, "identity/cat": 0.5}) == "; identity: dog 0.4123, cat 0.5000"
    )
    assert identities({"loss": 1.0, "dino": 0.3}) == ""  # one subject anywhere: no identity terms
    assert photo_counts([Subject(subject)]) == "; subject: 1 photo"
    assert photo_counts([Subject([subject, subject])]) == "; subject: 2 photos"
    assert photo_counts([Subject([subject, subject], "dog"), Subject(subject, "cat")]) == "; photos: dog 2, cat 1"


def test_a_refines_similarity_before_and_after_per_subject_and_network():
    metrics = {
        "before": {"dog": {"dino": 0.5, "check": 0.25}, "cat": {"dino": 0.75, "check": 0.5}},
        "after": {"dog": {"dino": 0.625, "check": 0.375}, "cat": {"dino": 0.875, "check": 0.5}},
    }
    assert similarity(metrics) == [
        ("dog", "dino", 0.5, 0.625),
        ("dog", "check", 0.25, 0.375),
        ("cat", "dino", 0.75, 0.875),
        ("cat", "check", 0.5, 0.5),
    ]
    assert similarity({"best_iteration": 0}) is None  # a learn or edit run has none
