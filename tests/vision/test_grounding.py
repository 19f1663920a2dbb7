"""SubjectCropper on a tiny, seeded, real Grounding DINO saved to a local directory (offline, CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import make_grounding_dino

from siso.hub import ModelLoadError
from siso.vision.grounding import SubjectCropper

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (tests/conftest.py)


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    return make_grounding_dino(tmp_path_factory.mktemp("grounding-dino"))


@pytest.fixture(scope="module")
def cropper(detector_dir) -> SubjectCropper:
    return SubjectCropper(model=str(detector_dir), box_threshold=0.0)  # random weights: every box scores above 0


def test_crop_is_the_returned_box_inside_the_image(cropper, subject):
    crop, box = cropper(subject, "dog")
    assert box is not None and len(box) == 4
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= subject.width and 0 <= y0 < y1 <= subject.height
    assert all(v == round(v) for v in box)
    assert crop.size == (x1 - x0, y1 - y0)
    assert np.array_equal(np.asarray(crop), np.asarray(subject.crop(tuple(round(v) for v in box))))


def test_box_is_the_top_scoring_detection(cropper, subject):
    # Same computation by hand: the cropper must pick the argmax box, in pixels of the original image.
    inputs = cropper.processor(images=subject, text="a dog.", return_tensors="pt")
    with torch.no_grad():
        outputs = cropper.model(**inputs)
    result = cropper.processor.post_process_grounded_object_detection(
        outputs, input_ids=inputs["input_ids"], threshold=0.0, target_sizes=[(subject.height, subject.width)]
    )[0]
    top = result["boxes"][result["scores"].argmax()]
    top = torch.minimum(top.clamp(min=0), torch.tensor([subject.width, subject.height] * 2, dtype=top.dtype))
    box, score = cropper.detect(subject, "dog")
    assert score == pytest.approx(float(result["scores"].max()))
    assert box == pytest.approx(top.tolist(), abs=1e-4)
    assert cropper(subject, "dog")[1] == [float(round(v)) for v in top.tolist()]


def test_nothing_detected_returns_full_image_and_none(cropper, subject, monkeypatch):
    # Scores are sigmoids, never strictly above 1.0, so nothing passes.
    monkeypatch.setattr(cropper, "box_threshold", 1.0)
    assert cropper.detect(subject, "dog") is None
    crop, box = cropper(subject, "dog")
    assert box is None
    assert crop is subject


def test_prompt_is_lowercase_phrase_with_dot(cropper, subject):
    assert SubjectCropper.prompt(" Dog ") == "a dog."
    assert cropper(subject, "Dog")[1] == cropper(subject, "dog")[1]


def test_non_rgb_image_keeps_its_mode(cropper, subject):
    gray = subject.convert("L")
    crop, box = cropper(gray, "dog")
    assert box is not None and crop.mode == "L"


def test_missing_model_raises_model_load_error(detector_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        SubjectCropper(model="siso-tests/no-such-grounding-dino")
    with pytest.raises(ModelLoadError, match="subject detector from directory"):
        SubjectCropper(model=str(tmp_path))
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((detector_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="processor from directory"):
        SubjectCropper(model=str(weights_only))


def test_other_images_give_boxes_in_their_own_pixels(cropper):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    crop, box = cropper(big, "backpack")
    assert box is not None and box[2] <= 200 and box[3] <= 150
    assert crop.size == (box[2] - box[0], box[3] - box[1])
