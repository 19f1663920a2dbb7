"""Scoring a refine (``dreambench-refine``, `siso.eval.refine`): each image before and after, and the gain over items.

Per image (`RefineScorer`), from its refine run folder (``input.png``, ``best.png``, ``mask.png``, ``metrics.json``):

- every identity metric asked (``dino``, ``dinov2``, ``clip_i``, ``ir``; `siso.eval.metrics.METRICS`) on the whole
  image and, as ``<metric>_region``, on the crop of the box around the refined region (``mask.png``: the region, grown
  by ``--mask-dilation``), and ``clip_t`` on the whole image, each before (the input) and after (the refined image);
- ``lpips`` (when asked): LPIPS-alex of the refined image to the input, both resized to 512 x 512 (how far it moved);
- ``psnr_bg``: PSNR (dB, 8-bit pixels) of the refined image to the input outside the region (the background kept);
  ``None`` where there is no outside (``--region all``) or nothing outside changed;
- ``iterations`` and ``seconds`` (the run's inversion and optimization, without loading models).

An item's values are the means over its images; `gain_rows` summarizes them over items.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from siso.eval.lpips import ALEXNET_URL, LPIPS_ALEX_URL, load_lpips
from siso.eval.metrics import METRICS, build_metrics, read_rgb
from siso.eval.suites import EvalItem
from siso.images import pil_to_tensor
from siso.io import write_atomic, write_json
from siso.runs.refine import region_box

# Metrics a refine is scored with beside the identity metrics (`METRICS` with ``identity``).
PAIRED = ("clip_t",)  # before and after, whole image
CHANGE = ("lpips",)  # the refined image against its input
# Facts of every image, whatever the metrics.
FACTS = ("psnr_bg", "iterations", "seconds")
LPIPS_SIZE = 512  # as `siso.eval.metrics.BackgroundLPIPS` (ImagenHub's size)
BOOTSTRAP = 2000  # resamples of the items for the gain's interval


def refine_metric_names() -> list[str]:
    """The metrics ``dreambench-refine`` takes: the identity metrics, then `PAIRED` and `CHANGE`."""
    return [*(n for n in METRICS if METRICS[n].identity), *PAIRED, *CHANGE]


def check_refine_metrics(names: list[str], models: dict[str, str]) -> None:
    """Refuse metrics a refine is not scored with, and models for metrics not asked, before anything loads.

    Raises:
        ValueError: naming them.
    """
    known = refine_metric_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"dreambench-refine is not scored with {', '.join(unknown)}; it takes {', '.join(known)}")
    stray = [n for n in models if n not in names]
    if stray:
        raise ValueError(f"model given for metric(s) not requested: {', '.join(stray)}")
    if "lpips" in names and "lpips" not in models:
        raise ValueError(
            "lpips needs the LPIPS weights: a folder with alexnet-owt-7be5be79.pth "
            f"({ALEXNET_URL}) and alex.pth ({LPIPS_ALEX_URL}); pass --metric-model lpips=DIR"
        )


def psnr_outside(x: Image.Image, y: Image.Image, region: np.ndarray) -> float | None:
    """PSNR in dB of ``x`` to ``y`` (8-bit RGB, same size) over the pixels outside ``region`` ((H, W) bool); ``None``
    when ``region`` covers every pixel, infinite when they agree there."""
    outside = ~region
    if not outside.any():
        return None
    diff = np.asarray(x, np.float64)[outside] - np.asarray(y, np.float64)[outside]
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


class RefineScorer:
    """The scores of one refined image (`__call__`), its networks loaded once.

    Args:
        names: Metrics asked (`check_refine_metrics`).
        models: Model id, folder or file per metric, overriding the defaults (``lpips``: its weights folder).
        device: Torch device.
    """

    def __init__(self, names: list[str], models: dict[str, str], device: str):
        paired = [n for n in names if n not in CHANGE]
        self.metrics = build_metrics(paired, {k: v for k, v in models.items() if k in paired}, device)
        self.identity = [n for n in paired if METRICS[n].identity]
        self.lpips = None
        if "lpips" in names:
            folder = Path(models["lpips"])
            self.lpips = load_lpips(folder / Path(ALEXNET_URL).name, folder / "alex.pth", device)
        self.device = device

    def paired(self, image: Image.Image, box: tuple[int, int, int, int], item: EvalItem) -> dict[str, float]:
        """Every paired metric of ``image``, and each identity metric on its crop to ``box`` (``<name>_region``)."""
        scores = {}
        for name, metric in self.metrics.items():
            scores[name] = metric([image], item)
            if name in self.identity:
                scores[f"{name}_region"] = metric([image.crop(box)], item)
        return scores

    @torch.no_grad()
    def moved(self, refined: Image.Image, source: Image.Image) -> float:
        """LPIPS of ``refined`` to ``source``, both at `LPIPS_SIZE` squared."""
        size = (LPIPS_SIZE, LPIPS_SIZE)
        x, y = (pil_to_tensor(img.resize(size, Image.Resampling.LANCZOS)).to(self.device) for img in (refined, source))
        return float(self.lpips(x, y)[0])

    def __call__(self, run: Path, item: EvalItem) -> dict:
        """The record of the image refined in run folder ``run`` (`siso.runs.refine`)."""
        source, refined = read_rgb(run / "input.png"), read_rgb(run / "best.png")
        with Image.open(run / "mask.png") as mask:
            region = np.asarray(mask.convert("L")) > 127
        box = region_box(region)
        facts = json.loads((run / "metrics.json").read_text())
        record = {
            "region": facts["regions"][0],
            "box": list(box),
            "before": self.paired(source, box, item),
            "after": self.paired(refined, box, item),
        }
        if self.lpips is not None:
            record["lpips"] = self.moved(refined, source)
        record["psnr_bg"] = psnr_outside(refined, source, region)
        record["iterations"] = len(facts["iterations"])
        record["seconds"] = facts["timings"]["refine_seconds"]
        return record


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def item_record(item: EvalItem, images: list[str], per_image: list[dict]) -> dict:
    """An item's record: its images' records and their means (``before``, ``after``, ``gain`` per paired metric; the
    mean of each of `CHANGE` and `FACTS` the images have)."""
    before = {name: _mean([r["before"][name] for r in per_image]) for name in per_image[0]["before"]}
    after = {name: _mean([r["after"][name] for r in per_image]) for name in before}
    record = {"item": item.id, "subject": item.subject, "prompt": item.prompt, "images": images}
    record.update(before=before, after=after, gain={name: after[name] - before[name] for name in before})
    for name in (*CHANGE, *FACTS):
        if name in per_image[0]:
            finite = [r[name] for r in per_image if r[name] is not None and math.isfinite(r[name])]
            record[name] = _mean(finite)
    return {**record, "per_image": per_image}


def gain_rows(records: list[dict], seed: int = 0) -> list[dict]:
    """Per paired metric over items: the mean before and after, and the per-item gain's mean, sample standard
    deviation and 95% percentile bootstrap interval of its mean (`BOOTSTRAP` resamples of the items, ``seed``)."""
    rows = []
    for name in records[0]["gain"] if records else []:
        gains = np.array([r["gain"][name] for r in records])
        means = gains[np.random.default_rng(seed).integers(0, len(gains), (BOOTSTRAP, len(gains)))].mean(1)
        low, high = np.percentile(means, [2.5, 97.5])
        rows.append(
            {
                "metric": name,
                "before": float(np.mean([r["before"][name] for r in records])),
                "after": float(np.mean([r["after"][name] for r in records])),
                "gain": float(gains.mean()),
                "gain_sd": float(gains.std(ddof=1)) if len(gains) > 1 else math.nan,
                "gain_ci": [float(low), float(high)],
                "n": len(gains),
            }
        )
    return rows


def fact_rows(records: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over items of each of `CHANGE` and `FACTS` (items without one skipped)."""
    rows = []
    for name in (*CHANGE, *FACTS):
        values = np.array([r[name] for r in records if r.get(name) is not None])
        if len(values):
            sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            rows.append({"metric": name, "mean": float(values.mean()), "sd": sd, "n": len(values)})
    return rows


FACT_LABELS = {
    "lpips": "lpips (refined to input)",
    "psnr_bg": "psnr_bg (dB, outside the region)",
    "iterations": "iterations",
    "seconds": "seconds (inversion + optimization)",
}


def write_gain_summary(out: Path, records: list[dict], skipped: dict[str, str], header: str) -> None:
    """Write ``summary.md`` and ``summary.json`` (the same rows, and the skipped items) of item ``records``."""
    gains, facts = gain_rows(records), fact_rows(records)
    table = [
        header,
        "",
        "| metric | before | after | gain | gain s.d. | gain 95% CI | items |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['metric']} | {r['before']:.4f} | {r['after']:.4f} | {r['gain']:+.4f} | {r['gain_sd']:.4f} | "
        f"[{r['gain_ci'][0]:+.4f}, {r['gain_ci'][1]:+.4f}] | {r['n']} |"
        for r in gains
    ]
    table += ["", "| refine | mean | s.d. | items |", "|---|---|---|---|"]
    table += [f"| {FACT_LABELS[r['metric']]} | {r['mean']:.4f} | {r['sd']:.4f} | {r['n']} |" for r in facts]
    table += [
        "",
        "An item's value is the mean over its images; gain = after - before per item; s.d. = the sample standard "
        f"deviation of the per-item gains; 95% CI = percentile bootstrap interval of the mean gain ({BOOTSTRAP} "
        "resamples of the items, seed 0).",
    ]
    if skipped:
        table.append(f"\n{len(skipped)} item(s) were not refined: {', '.join(list(skipped)[:10])}")
    write_atomic(out / "summary.md", "\n".join(table) + "\n")
    write_json(out / "summary.json", {"gains": gains, "refine": facts, "skipped": skipped})
