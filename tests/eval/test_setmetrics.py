"""`siso.eval.setmetrics`: set metrics (CMMD, FD/KD on DINOv2, FID/KID) against a reference folder."""

import json

import pytest
import torch

from siso.eval.inception import FIDInceptionV3
from siso.eval.score import score
from siso.eval.suites import load_dreambench

from .helpers import _generate, _photo


def test_set_metrics_against_a_reference_folder(dreambench, eval_models, tmp_path):
    items = load_dreambench(dreambench)
    generated = _generate(items, tmp_path / "generated")
    models = {"cmmd": eval_models["clip_i"], "fd_dinov2": eval_models["dinov2"], "kd_dinov2": eval_models["dinov2"]}
    names = ["mse", *models]
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "same", names, models, progress=False, reference=generated)
    }
    assert rows["cmmd"]["mean"] == 0.0 and rows["cmmd"]["n"] == 8  # identical sets
    assert rows["fd_dinov2"]["mean"] == pytest.approx(0.0, abs=1e-6)
    kd_same = rows["kd_dinov2"]["mean"]
    other = tmp_path / "other"
    other.mkdir()
    for k in range(6):
        _photo(500 + k, size=(48, 48)).save(other / f"{k}.png")
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "other-scores", names, models, progress=False, reference=other)
    }
    assert rows["cmmd"]["mean"] > 0 and rows["fd_dinov2"]["mean"] > 0 and rows["kd_dinov2"]["mean"] > kd_same
    summary = json.loads((tmp_path / "other-scores" / "summary.json").read_text())
    assert [m["metric"] for m in summary["metrics"]] == names and summary["metrics"][1]["sem"] is None


def test_fid_and_kid_with_inception_weights(dreambench, tmp_path):
    # Random-weight FID Inception saved like the release file; two sets of two images keep this fast.
    weights = tmp_path / "pt_inception.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), weights)
    items = load_dreambench(dreambench)[:1]
    generated = _generate(items, tmp_path / "generated")
    models = {"fid": str(weights), "kid": str(weights)}
    rows = {
        r["metric"]: r
        for r in score(items, generated, tmp_path / "s", ["fid", "kid"], models, progress=False, reference=generated)
    }
    assert rows["fid"]["mean"] == pytest.approx(0.0, abs=1e-6) and rows["fid"]["n"] == 2
    assert rows["kid"]["mean"] <= 1e-9  # unbiased estimate for identical sets is <= 0 here
    with pytest.raises(ValueError, match="FID/KID need the FID Inception weights.*--metric-model fid="):
        score(items, generated, tmp_path / "t", ["fid"], progress=False, reference=generated)
