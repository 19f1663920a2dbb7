"""The layout of subjects given no box: each class found in the frozen model's first image, else a default slot."""

from PIL import Image

from siso.compose import Box, Subject, plan_layout


class StandInDetector:
    """Boxes per class name, best first (what `SubjectCropper.detect_all` returns)."""

    def __init__(self, found):
        self.found = found

    def detect_all(self, image, class_name):
        return [(box, 0.9) for box in self.found.get(class_name, [])]


def test_each_subject_takes_the_best_box_of_its_class_not_taken():
    image = Image.new("RGB", (100, 50))
    photo = Image.new("RGB", (64, 64))
    detector = StandInDetector({"dog": [[0, 0, 40, 50], [2, 0, 40, 50], [60, 0, 100, 50]], "cat": [[50, 0, 90, 40]]})
    subjects = [
        Subject(photo, "dog"),
        Subject(photo, "dog"),
        Subject(photo, "cat", Box(0.4, 0, 0.6, 1)),
        Subject(photo),
    ]
    placements, notes = plan_layout([s.box for s in subjects], ["dog", "dog", "cat", "bird"], image, detector)
    assert [p.source for p in placements] == ["detected", "detected", "given", "default slot"]
    assert placements[0].box == Box(0, 0, 0.4, 1)
    assert placements[1].box == Box(0.6, 0, 1, 1)  # the second best overlaps the first dog: the same dog
    assert placements[2].box == Box(0.4, 0, 0.6, 1)
    assert placements[3].box == Box(0.75, 0.1, 1, 0.9)  # the fourth of four default slots
    assert notes == ["no bird found in the first image: subject 4 goes in the default slot 0.75,0.1,1,0.9"]
