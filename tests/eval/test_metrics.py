"""`siso.eval.metrics`: the per-item metrics on tiny real networks (identity, CLIP-T, MSE, background LPIPS)."""

import dataclasses

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from siso.eval.metrics import METRICS, BackgroundLPIPS, build_metrics, read_rgb
from siso.eval.suites import SUITES, SuiteError, load_dreambench
from siso.hub import ModelLoadError
from siso.vision.masks import box_mask

from .helpers import _photo


def test_identity_and_diversity_metrics_on_known_cases(dreambench, eval_models):
    item = load_dreambench(dreambench)[2]  # red_teapot: a single reference photo
    metrics = build_metrics(
        ["dino", "dinov2", "clip_i", "mse"], {k: eval_models[k] for k in ("dino", "dinov2", "clip_i")}, "cpu"
    )
    same = [Image.open(item.subject_image).convert("RGB")]
    for name in ("dino", "dinov2", "clip_i"):
        assert metrics[name](same, item) == pytest.approx(1.0, abs=1e-5), name
        assert metrics[name]([_photo(50)], item) < 0.999, name
    assert metrics["mse"](same, item) == pytest.approx(0.0, abs=1e-12)
    assert metrics["mse"]([_photo(50)], item) > 0.05


def test_clip_t_is_a_cosine_that_depends_on_the_prompt(dreambench, eval_models):
    items = load_dreambench(dreambench)
    clip_t = build_metrics(["clip_t"], {"clip_t": eval_models["clip_t"]}, "cpu")["clip_t"]
    values = [clip_t([_photo(7)], item) for item in items]
    assert all(-1.0 <= v <= 1.0 for v in values)
    assert len(set(values)) == len(values)  # the prompt matters


def test_unknown_metric_and_stray_model():
    with pytest.raises(ValueError, match="unknown metric.*fid_typo"):
        build_metrics(["fid_typo"], {}, "cpu")
    with pytest.raises(ValueError, match="not requested: dino"):
        build_metrics(["mse"], {"dino": "x"}, "cpu")
    assert set(METRICS) >= {"dino", "dinov2", "clip_i", "clip_t", "ir", "mse"}


def test_background_lpips(editing_suite, lpips_weights, tmp_path):
    items = SUITES["imagenhub-editing"](editing_suite)
    metric = build_metrics(["lpips_bg"], {"lpips_bg": str(lpips_weights)}, "cpu")["lpips_bg"]
    source = read_rgb(items[0].input_image)
    assert metric([source], items[0]) == pytest.approx(0.0, abs=1e-7)  # an untouched photo keeps its background
    assert metric([_photo(99, size=(96, 80))], items[0]) > 0
    with pytest.raises(ValueError, match="lpips_bg needs the LPIPS weights"):
        build_metrics(["lpips_bg"], {}, "cpu")
    with pytest.raises(SuiteError, match="needs an editing suite"):
        metric([source], load_dreambench_like_item(items[0]))


def load_dreambench_like_item(item):
    return dataclasses.replace(item, input_image=None, mask=None)


def test_background_lpips_detects_the_mask_when_none_is_given(editing_suite, lpips_weights, tmp_path):
    item = dataclasses.replace(SUITES["imagenhub-editing"](editing_suite)[0], mask=None)
    detector, sam = tiny.make_grounding_dino(tmp_path / "gd"), tiny.make_sam(tmp_path / "sam")
    metric = BackgroundLPIPS(str(lpips_weights), "cpu", detector=str(detector), segmenter=str(sam))
    source = read_rgb(item.input_image)
    assert metric([source], item) == pytest.approx(0.0, abs=1e-7)
    assert metric.segmenter is not None  # the tiny detector + SAM served as the mask
    # The mask is SAM's segmentation of the input at the metric's 512 px, not the detector's box.
    resized = source.resize((512, 512), Image.Resampling.LANCZOS)
    segmented = metric.segmenter.segment(resized, item.class_name)
    box = metric.segmenter.detect_box(resized, item.class_name)
    assert segmented is not None and segmented.any()
    assert torch.equal(metric._mask(item, resized), torch.from_numpy(segmented).float()[None, None])
    assert not np.array_equal(segmented, box_mask(box, (512, 512)))


def test_clip_t_equals_clipmodel_logits_over_scale(dreambench, eval_models):
    # Validation through an independent path: CLIPModel's own forward computes image-text cosine x logit_scale.
    from transformers import CLIPModel, CLIPTokenizer

    from siso.eval.metrics import to_batch
    from siso.losses import CLIP_MEAN, CLIP_STD, preprocess

    item = load_dreambench(dreambench)[0]
    image = _photo(8)
    ours = build_metrics(["clip_t"], {"clip_t": eval_models["clip_t"]}, "cpu")["clip_t"]([image], item)
    model = CLIPModel.from_pretrained(eval_models["clip_t"]).eval()
    tokens = CLIPTokenizer.from_pretrained(eval_models["clip_t"])([item.prompt], padding=True, return_tensors="pt")
    pixels = preprocess(to_batch([image], 28), 28, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        logits = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    assert ours == pytest.approx(float(logits.logits_per_image[0, 0] / model.logit_scale.exp()), abs=1e-5)


def test_uncached_metric_model_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="DINO metric model 'nobody/dino'.*not in the local Hugging Face cache"):
        build_metrics(["dino"], {"dino": "nobody/dino"}, "cpu")
