"""`siso.vision.segmenter`: detection + SAM on tiny real models (offline, CPU): one solid region, SAM's best
mask, nothing detected, naming the object, and models that are missing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from tiny import make_grounding_dino, make_sam

from siso.hub import ModelLoadError
from siso.vision.masks import clean_mask
from siso.vision.segmenter import OBJECT_LABELS, ObjectSegmenter


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("segmenter")
    return {"detector": make_grounding_dino(root / "gd"), "sam": make_sam(root / "sam")}


@pytest.fixture(scope="module")
def segmenter(model_dirs) -> ObjectSegmenter:
    # Random weights score arbitrarily: threshold 0 keeps every box (see test_crop.py).
    return ObjectSegmenter(str(model_dirs["detector"]), str(model_dirs["sam"]), box_threshold=0.0)


def test_segment_is_one_solid_region_of_the_image_size(segmenter, subject):
    mask = segmenter.segment(subject, "dog")
    assert mask.dtype == bool and mask.shape == (subject.height, subject.width)
    assert mask.any()
    assert ndimage.label(mask)[1] == 1
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)
    assert segmenter.detect_box(subject, "dog") == segmenter.detector.detect(subject, "dog")[0]
    assert np.array_equal(mask, segmenter.segment_box(subject, segmenter.detect_box(subject, "dog")))


def test_segment_box_takes_sams_highest_iou_mask(segmenter, subject):
    box = [20.0, 10.0, 70.0, 60.0]
    inputs = segmenter.processor(images=subject, input_boxes=[[box]], return_tensors="pt")
    with torch.no_grad():
        outputs = segmenter.model(**inputs)  # multimask output is SAM's default: 3 candidates
    masks = segmenter.processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0]
    assert masks.shape == (3, subject.height, subject.width)
    best = masks[outputs.iou_scores[0, 0].argmax()].numpy()
    assert np.array_equal(segmenter.segment_box(subject, box), clean_mask(best))


def test_nothing_detected_gives_none(segmenter, subject, monkeypatch):
    monkeypatch.setattr(segmenter.detector, "box_threshold", 1.0)  # sigmoid scores never exceed 1
    assert segmenter.detect_box(subject, "dog") is None
    assert segmenter.segment(subject, "dog") is None
    assert segmenter.name_object(subject, ("dog", "cat")) is None


def test_name_object_returns_one_of_the_labels(segmenter, subject):
    labels = ("dog", "cat", "backpack")
    assert segmenter.name_object(subject, labels) in labels
    assert segmenter.name_object(subject, ("cat",)) == "cat"
    with pytest.raises(ValueError, match="detector reads 32: pass fewer"):
        segmenter.name_object(subject, ("dog",) * 20)  # 20 x "dog ." + [CLS] [SEP] = 42 tokens


def test_object_labels_fit_the_real_detectors_text():
    assert len(set(OBJECT_LABELS)) == len(OBJECT_LABELS)
    assert all(label == label.lower().strip() and "." not in label for label in OBJECT_LABELS)
    assert {"dog", "cat", "backpack", "teddy bear", "sneaker", "boot", "teapot", "vase", "can", "cartoon"} <= set(
        OBJECT_LABELS
    )
    # WordPiece splits a word into at most one piece per character: with a "." per label and [CLS] [SEP], this
    # bounds the token count of grounding-dino-tiny's uncased BERT text without its vocabulary.
    words = [word for label in OBJECT_LABELS for word in label.split()]
    assert sum(map(len, words)) + len(OBJECT_LABELS) + 2 <= 256


def test_missing_models_raise_model_load_error(model_dirs, tmp_path):
    detector = str(model_dirs["detector"])
    with pytest.raises(ModelLoadError, match="SAM object segmenter 'siso-tests/no-such-sam'.*not in the local"):
        ObjectSegmenter(detector, "siso-tests/no-such-sam")
    with pytest.raises(ModelLoadError, match="SAM object segmenter from directory"):
        ObjectSegmenter(detector, str(tmp_path))
    with pytest.raises(ModelLoadError, match="subject detector"):
        ObjectSegmenter(str(tmp_path), str(model_dirs["sam"]))
