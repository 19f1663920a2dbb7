"""SubjectCropper on a tiny, seeded, real Grounding DINO saved to a local directory (offline, CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SwinConfig,
)
from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

from siso.eval.crop import SubjectCropper
from siso.hub import ModelLoadError

WORDS = ["a", "dog", "cat", "backpack", "photo", "of", "the"]


def bert_vocab() -> dict[str, int]:
    """A tiny uncased BERT WordPiece vocabulary laid out like ``bert-base-uncased``'s first 1030 entries.

    Grounding DINO hard-codes the ids of [CLS] (101), [SEP] (102), "." (1012) and "?" (1029) to split the prompt into
    phrases, so those tokens must sit at the real ids; the gaps are the real vocabulary's [unusedN] tokens.
    """
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 994)]
    tokens += [chr(c) for c in range(33, 64)]  # "!" .. "?": ids 999..1029 as in BERT, so "." is 1012
    tokens += WORDS
    return {token: i for i, token in enumerate(tokens)}


def make_grounding_dino(path: Path) -> Path:
    """Save a ~0.2M-parameter Grounding DINO (Swin backbone, BERT text encoder, 10 queries) and its processor."""
    tokenizer = BertTokenizer(vocab=bert_vocab())
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "."]) == [101, 102, 1012]
    # Four Swin stages, the last three fed to the detector as in grounding-dino-tiny, plus one extra strided level.
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        encoder_layers=1,
        decoder_layers=2,  # decoder box heads are tied to layer 0's; one layer leaves nothing to tie and fails
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=1,
        decoder_n_points=1,
        num_queries=10,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    # 64 px short side: the smallest feature level must stay above 1x1, or GroupNorm rejects it.
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 128})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a tiny model, thread hand-off costs more than the arithmetic: with the CPU shared, one thread is ~10x faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
