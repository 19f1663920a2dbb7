"""`siso.eval.gains`: the background PSNR, an item's means, and the gain over items with its spread."""

import math

import numpy as np
import pytest
from PIL import Image

from siso.eval.gains import BOOTSTRAP, check_refine_metrics, fact_rows, gain_rows, item_record, psnr_outside
from siso.eval.suites import EvalItem


def test_psnr_outside_counts_only_the_pixels_outside_the_region():
    x = np.zeros((4, 4, 3), np.uint8)
    y = x.copy()
    y[:2] = 255  # changed inside the region
    y[3, 3] = 10  # one changed pixel outside: mse = 3 * 100 / (8 * 3) over the 8 outside pixels
    region = np.zeros((4, 4), bool)
    region[:2] = True
    images = Image.fromarray(x), Image.fromarray(y)
    assert psnr_outside(*images, region) == pytest.approx(10 * math.log10(255**2 / (100 / 8)))
    assert psnr_outside(images[0], images[0], region) == math.inf
    assert psnr_outside(*images, np.ones((4, 4), bool)) is None  # no outside: --region all


def _item(index: int) -> EvalItem:
    return EvalItem(f"dog/{index:02d}", "dog", "dog", "a dog", subject_image=None)


def test_an_item_is_the_mean_of_its_images():
    images = [
        {"before": {"dino": 0.2}, "after": {"dino": 0.5}, "psnr_bg": 20.0, "iterations": 3, "seconds": 1.0},
        {"before": {"dino": 0.4}, "after": {"dino": 0.5}, "psnr_bg": math.inf, "iterations": 5, "seconds": 3.0},
    ]
    record = item_record(_item(0), ["dog/00/0.png", "dog/00/1.png"], images)
    assert record["before"] == {"dino": pytest.approx(0.3)} and record["gain"] == {"dino": pytest.approx(0.2)}
    assert (record["psnr_bg"], record["iterations"], record["seconds"]) == (20.0, 4, 2.0)  # inf: nothing changed
    assert "lpips" not in record and record["per_image"] == images


def test_the_gain_over_items_has_its_standard_deviation_and_bootstrap_interval():
    gains = [0.1, 0.3, 0.2, 0.6]
    records = [
        {"item": f"dog/{k:02d}", "before": {"dino": 0.5}, "after": {"dino": 0.5 + g}, "gain": {"dino": g}}
        for k, g in enumerate(gains)
    ]
    for record, facts in zip(records, [(9.0, 2), (11.0, 2), (None, 4), (10.0, 4)], strict=True):
        record["psnr_bg"], record["iterations"] = facts
    [row] = gain_rows(records)
    assert (row["metric"], row["before"], row["after"], row["n"]) == ("dino", 0.5, pytest.approx(0.8), 4)
    assert row["gain"] == pytest.approx(0.3) and row["gain_sd"] == pytest.approx(np.std(gains, ddof=1))
    low, high = row["gain_ci"]
    assert min(gains) <= low < row["gain"] < high <= max(gains)
    assert gain_rows(records) == gain_rows(records)  # seeded
    assert BOOTSTRAP >= 1000
    facts = {r["metric"]: r for r in fact_rows(records)}
    assert (facts["psnr_bg"]["mean"], facts["psnr_bg"]["n"]) == (10.0, 3)  # the item without one is left out
    assert facts["iterations"]["mean"] == 3 and "lpips" not in facts


@pytest.mark.parametrize(
    ("names", "models", "message"),
    [
        (["dino", "fid"], {}, "dreambench-refine is not scored with fid; it takes dino, dinov2, clip_i, ir, clip_t"),
        (["dino"], {"clip_t": "x"}, "model given for metric(s) not requested: clip_t"),
        (["lpips"], {}, "pass --metric-model lpips=DIR"),
    ],
)
def test_refine_metrics_are_checked_before_anything_loads(names, models, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_refine_metrics(names, models)
