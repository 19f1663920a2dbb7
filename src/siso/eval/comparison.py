"""The side-by-side summary of ``eval run --from-saved`` (`siso.eval.fromsaved`): every arm's scores, and what an item
costs in each, with a subject's learning counted once however many items use it.

Seconds per item (``seconds``), in each arm, are the sum of three parts, each a wall time recorded by the runs (model
loading is in none of them):

- ``seconds_learning``: joint: the seconds of the LoRA that drew the item (the sum of its iterations' seconds, as
  the per-LoRA table of ``eval run`` counts them) divided by the number of this run's items that LoRA draws
  (per-prompt: 1; two-stage: the pair's items). Composed and polished: for each of the item's subjects, the seconds
  of learning it alone divided by the number of this run's items it appears in (whichever pair), summed over its
  subjects;
- ``seconds_polish``: polished only: its compose run's polish iterations' seconds, divided as the joint LoRA's are;
- ``seconds_drawing``: the item's images, at the seconds per image its unit's drawing measured (joint: one denoiser
  pass a step; composed and polished: K + 1).

"This run's items" are the items of the invocation (``--limit`` N counts only the first N), so the amortised
learning falls as more items share a subject: on the whole suite a subject is used by 5 to 15 items.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from siso.eval.generate import DRAWING_FILE, plan
from siso.eval.multi import MultiItem
from siso.eval.score import summarize
from siso.io import write_atomic, write_json

ARMS = ("joint", "composed", "polished")
PARTS = ("seconds_learning", "seconds_polish", "seconds_drawing")


def arm_folder(out: str | Path, arm: str) -> Path:
    """The folder of ``arm``'s runs, images and scores: ``OUT`` itself for the joint arm (``eval run``'s layout),
    ``OUT/<arm>`` for the others."""
    return Path(out) if arm == "joint" else Path(out) / arm


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _loop_seconds(metrics: dict) -> float:
    return sum(i["seconds"] for i in metrics.get("iterations", []))


def item_seconds(out: str | Path, items: list[MultiItem], protocol: str, num_images: int) -> dict[str, dict]:
    """Arm -> item id -> its ``seconds_learning``, ``seconds_polish``, ``seconds_drawing`` (see the module's docstring)
    and their sum ``seconds``; an item whose runs did not record a part (a joint unit drawn before ``drawing.json``
    was written) is left out of that arm."""
    out = Path(out)
    uses = Counter(s.subject for item in items for s in item.subjects)
    alone = {name: _json(out / "saved" / name / "metrics.json") for name in uses}
    seconds: dict[str, dict] = {arm: {} for arm in ARMS}
    for unit in plan(items, protocol):
        share = len(unit.items)
        runs = {arm: _json(arm_folder(out, arm) / "subjects" / unit.name / "metrics.json") for arm in ARMS}
        drawing = _json(out / "subjects" / unit.name / DRAWING_FILE)
        for item in unit.items:
            if runs["joint"] is not None and drawing is not None:
                parts = (_loop_seconds(runs["joint"]) / share, 0.0, drawing["seconds_per_image"] * num_images)
                seconds["joint"][item.id] = parts
            if any(alone[s.subject] is None for s in item.subjects):
                continue
            learning = sum(_loop_seconds(alone[s.subject]) / uses[s.subject] for s in item.subjects)
            for arm in ARMS[1:]:
                if (composed := runs[arm]) is not None:
                    per_image = composed["timings"]["generate_seconds"] / len(composed["images"])
                    seconds[arm][item.id] = (learning, _loop_seconds(composed) / share, per_image * num_images)
    return {
        arm: {i: {**dict(zip(PARTS, p, strict=True)), "seconds": sum(p)} for i, p in by_item.items()}
        for arm, by_item in seconds.items()
    }


def _cell(row: dict, items: int, digits: int) -> str:
    if not row["n"]:
        return "n/a"
    text = f"{row['mean']:.{digits}f}" + (f" +- {row['sem']:.{digits}f}" if math.isfinite(row["sem"]) else "")
    return text if row["n"] == items else f"{text} ({row['n']} items)"


def write_comparison(out: str | Path, items: list[MultiItem], protocol: str, polish: int, num_images: int) -> Path:
    """Write ``OUT/summary.md`` and ``OUT/summary.json``: per metric of the arms' ``scores/summary.json`` and per
    seconds part (`item_seconds`), each arm's mean +- standard error over items; returns the Markdown's path."""
    out = Path(out)
    scored = {arm: json.loads((arm_folder(out, arm) / "scores" / "summary.json").read_text()) for arm in ARMS}
    seconds = item_seconds(out, items, protocol, num_images)
    rows = {arm: {r["metric"]: r for r in scored[arm]["metrics"]} for arm in ARMS}
    for arm in ARMS:
        records = [{"metrics": value} for value in seconds[arm].values()]
        rows[arm].update({r["metric"]: r for r in summarize(records, ["seconds", *PARTS])})
    names = list(rows["joint"])
    header = ["| metric | joint | composed | polished |", "|---|---|---|---|"]
    table = [
        f"| {name} | "
        + " | ".join(_cell(rows[arm][name], len(items), 2 if name.startswith("seconds") else 4) for arm in ARMS)
        + " |"
        for name in names
    ]
    uses = Counter(s.subject for item in items for s in item.subjects)
    notes = [
        f"{len(items)} items, {num_images} image(s) each, protocol {protocol}; each arm's own tables are in scores/, "
        "composed/scores/ and polished/scores/.",
        "",
        "- joint: the item's subjects learned together, each in its box (`eval run` without `--from-saved`);",
        f"- composed: each subject learned alone once ({len(uses)} subjects, in saved/) and reused by every item it "
        "appears in; each item drawn from the saved subjects in the joint arm's boxes, nothing learned;",
        f"- polished: composed, then up to {polish} iterations of the composed loss (`--polish {polish}`).",
        "",
        "seconds = seconds_learning + seconds_polish + seconds_drawing, per item, from the wall times the runs "
        "recorded (model loading is in none; an optimization's seconds are the sum of its iterations' seconds):",
        "",
        "- seconds_learning: joint: the seconds of the LoRA that drew the item, divided by the number of these items "
        "it draws; composed and polished: for each of the item's subjects, the seconds of learning it alone divided "
        "by the number of these items it appears in (" + ", ".join(f"{name} {n}" for name, n in uses.items()) + "), "
        "summed over the item's subjects;",
        "- seconds_polish: polished: its compose run's polish seconds, divided as a joint LoRA's are;",
        "- seconds_drawing: the item's images, at the seconds per image its unit's drawing measured.",
    ]
    write_atomic(out / "summary.md", "\n".join([*header, *table, "", *notes]) + "\n")
    write_json(out / "summary.json", {"arms": {arm: list(rows[arm].values()) for arm in ARMS}, "seconds": seconds})
    return out / "summary.md"
