"""`siso.eval.multiscore`: each detection goes to one requested box, and the summary's metric names."""

from siso.eval.multiscore import match_detections, summary_names


def test_match_detections_gives_each_box_to_one_subject():
    requested = [(0, 0, 10, 10), (10, 0, 20, 10), (0, 10, 10, 20)]
    found = {"dog": [[11, 0, 20, 10], [0, 0, 9, 10]], "cat": []}
    # The two dogs each take the detection over their own box, whatever the detector's order; no cat was found.
    assert match_detections(requested, ["dog", "dog", "cat"], found) == [[0, 0, 9, 10], [11, 0, 20, 10], None]
    # One dog detected for two dog boxes: the box it overlaps most takes it.
    assert match_detections(requested[:2], ["dog", "dog"], {"dog": [[9, 0, 20, 10]]}) == [None, [9, 0, 20, 10]]
    assert summary_names(["dino", "clip_t"], ["dino"], True) == [
        "dino",
        "dino_min",
        "clip_t",
        "success",
        "leakage",
        "iou",
        "iou_min",
    ]
