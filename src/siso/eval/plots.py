"""Per-metric histograms of the per-item values, drawn with PIL (no plotting dependency)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw


def histogram(values: list[float], title: str, bins: int = 20, size: tuple[int, int] = (480, 300)) -> Image.Image:
    """Histogram of ``values`` with the mean marked; non-finite values are left out (and counted in the title).

    Args:
        values: One value per item.
        title: Drawn at the top (the metric name).
    """
    width, height = size
    left, right, top, bottom = 40, 16, 28, 36
    finite = [v for v in values if math.isfinite(v)]
    plot = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(plot)
    dropped = len(values) - len(finite)
    draw.text((left, 6), f"{title}  (n={len(finite)}{f', {dropped} non-finite' if dropped else ''})", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if not finite:
        return plot
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    bar = (width - left - right) / bins
    for i, count in enumerate(counts):
        bar_top = height - bottom - (height - top - bottom) * count / max(counts)
        draw.rectangle([left + i * bar + 1, bar_top, left + (i + 1) * bar - 1, height - bottom], fill="#4c78a8")
    mean = sum(finite) / len(finite)
    x = left + (width - left - right) * (mean - lo) / (hi - lo)
    draw.line([x, top, x, height - bottom], fill="#e45756", width=2)
    draw.text((x + 3, top + 2), f"mean {mean:.4g}", fill="#e45756")
    draw.text((left, height - bottom + 6), f"{lo:.4g}", fill="black")
    draw.text((width - right - 48, height - bottom + 6), f"{hi:.4g}", fill="black")
    draw.text((4, top), str(max(counts)), fill="black")
    return plot
