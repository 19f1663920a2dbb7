"""Scoring generated images suite item by suite item, resumably, with a summary table.

Output folder::

    items.jsonl     one JSON line per scored item (appended and fsynced as each item finishes)
    summary.md      mean +- standard error per metric, Markdown; for ``eval run`` also per LoRA learned, its
                    iterations (to early stop, or the cap) and seconds of optimization
    summary.csv     the metrics, CSV
    summary.json    the same as summary.md (``metrics``, ``optimization``) plus counts and the missing items
    plots/<metric>.png   histogram of the per-item values, mean marked

A rerun skips the items already in ``items.jsonl``; a line cut short by a crash is dropped and that item rescored.
Under ``accelerate launch`` the items are split across processes; each appends to its own ``items.<rank>.jsonl``,
and the main process merges them into ``items.jsonl`` (in suite order) and writes the summary.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from siso.eval.metrics import METRICS, BackgroundLPIPS, IdentityMetric, build_metrics, read_rgb
from siso.eval.multi import MultiItem
from siso.eval.multiscore import WHOLE_IMAGE_METRICS, score_multi_item, summary_names
from siso.eval.plots import histogram
from siso.eval.setmetrics import SET_METRICS, image_files
from siso.eval.suites import EvalItem, SuiteError, generated_images
from siso.io import write_atomic, write_json
from siso.vision.grounding import SubjectCropper
from siso.vision.segmenter import DEFAULT_DETECTOR, DEFAULT_SEGMENTER

ITEMS_FILE = "items.jsonl"


def read_records(path: Path) -> list[dict]:
    """The complete records of a JSONL file, stopping at a partial line (a crash mid-write)."""
    records = []
    if path.is_file():
        with path.open("rb") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return records


def _drop_partial_tail(path: Path) -> None:
    """Cut a partial last line off a shard this process is about to append to (else lines would fuse)."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def _append(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _merge(out: Path, items: list[EvalItem]) -> list[dict]:
    """Merge the shards into ``items.jsonl`` and return the records of ``items``, in suite order.

    Records of items outside ``items`` (an earlier run without ``--limit``, say) are kept in the file, after them.
    """
    latest = {
        r["item"]: r for path in [out / ITEMS_FILE, *sorted(out.glob("items.*.jsonl"))] for r in read_records(path)
    }
    ids = [item.id for item in items if item.id in latest]
    others = [i for i in latest if i not in set(ids)]
    write_atomic(out / ITEMS_FILE, "".join(json.dumps(latest[i]) + "\n" for i in [*ids, *others]))
    for path in out.glob("items.*.jsonl"):
        path.unlink()  # merged above; a crash before this line only leaves duplicates, which dedupe
    return [latest[i] for i in ids]


def summarize(records: list[dict], metric_names: list[str]) -> list[dict]:
    """Mean and standard error (sample std / sqrt(n)) over items, per metric."""
    rows = []
    for name in metric_names:
        values = [r["metrics"][name] for r in records if name in r["metrics"]]
        n = len(values)
        mean = sum(values) / n if n else math.nan
        sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
        rows.append({"metric": name, "mean": mean, "sem": sem, "n": n})
    return rows


def optimization_rows(records: list[dict]) -> list[dict]:
    """Mean and standard error over the optimizations' ``metrics.json`` records (`siso.optimize.SisoResult.record`) of
    ``iterations`` (how many ran: to the early stop, or the cap) and ``seconds`` (their summed wall time: the loop's,
    without loading models or drawing generic negatives)."""
    facts = [
        {"metrics": {"iterations": len(r["iterations"]), "seconds": sum(i["seconds"] for i in r["iterations"])}}
        for r in records
    ]
    return summarize(facts, ["iterations", "seconds"])


def write_summary(out: Path, rows: list[dict], missing: list[str], optimization: list[dict] | None = None) -> None:
    table = ["| metric | mean | +- s.e. | items |", "|---|---|---|---|"]
    table += [f"| {r['metric']} | {r['mean']:.4f} | {r['sem']:.4f} | {r['n']} |" for r in rows]
    if optimization:
        table += ["", "| per LoRA | mean | +- s.e. | LoRAs |", "|---|---|---|---|"]
        table += [f"| {r['metric']} | {r['mean']:.4f} | {r['sem']:.4f} | {r['n']} |" for r in optimization]
    if missing:
        table.append(f"\n{len(missing)} item(s) had no generated images: {', '.join(missing[:10])}")
    write_atomic(out / "summary.md", "\n".join(table) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["metric", "mean", "sem", "n"])
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "summary.csv", buffer.getvalue())
    extra = {"optimization": optimization} if optimization else {}
    write_json(out / "summary.json", {"metrics": rows, **extra, "missing": missing})


def score(
    items: list[EvalItem | MultiItem],
    generated: str | Path,
    out: str | Path,
    metric_names: list[str],
    models: dict[str, str] | None = None,
    device: str | None = None,
    progress: bool = True,
    reference: str | Path | None = None,
    crop: str | None = None,
    detector: str = DEFAULT_DETECTOR,
    segmenter: str = DEFAULT_SEGMENTER,
    box_threshold: float = 0.3,
    optimizations: list[dict] | None = None,
) -> list[dict]:
    """Score the generated images of every item and write the per-item records and the summary.

    Multi-subject items (`siso.eval.multi.MultiItem`) are scored by `siso.eval.multiscore`: identity metrics per
    subject on its box, ``success``, whole-image ``clip_t``, and with ``crop`` each subject's detected box and its IoU
    with the requested one (identity stays on the requested boxes).

    Args:
        items: The suite's items (`siso.eval.suites.SUITES`).
        generated: Root of the generated images, ``<root>/<item id>/*.png``.
        out: Output folder (created; an earlier run's ``items.jsonl`` there is resumed).
        metric_names: Keys of `siso.eval.metrics.METRICS` (per item) or `siso.eval.setmetrics.SET_METRICS`
            (one value for all generated images against ``reference``).
        models: Model id or folder per metric name, overriding the defaults.
        device: Torch device; ``None`` means this process's accelerator (one per process under accelerate), else cpu.
        reference: Folder of reference images (searched recursively) for the set-level metrics.
        crop: Grounding DINO model id or folder: identity metrics then see each generated image cropped to the
            detected subject (the paper's protocol; ``crop_boxes`` in the record, null where nothing was found).
        detector, segmenter, box_threshold: Grounding DINO, SAM and the detection threshold that mask editing items
            without a mask file for ``lpips_bg`` (the paper's masks, as `siso.eval.edit` finds them).
        optimizations: The ``metrics.json`` records of the LoRAs that made the images (``eval run``,
            `siso.eval.generate.unit_metrics`): the summary adds their iterations and seconds (`optimization_rows`).

    Returns:
        The summary rows (metric, mean, sem, n).

    Raises:
        SuiteError: some items have no generated images (after scoring the others, whose results are kept).
    """
    generated, out = Path(generated), Path(out)
    if not generated.is_dir():
        raise SuiteError(f"generated folder {generated} does not exist")
    models = models or {}
    unknown = [n for n in metric_names if n not in METRICS and n not in SET_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join([*METRICS, *SET_METRICS])}")
    stray = [n for n in models if n not in metric_names]
    if stray:
        raise ValueError(f"model given for metric(s) not requested: {', '.join(stray)}")
    set_names = [n for n in metric_names if n in SET_METRICS]
    if set_names and reference is None:
        raise ValueError(f"{', '.join(set_names)} compare against a reference set: pass a reference folder")
    reference_files = image_files(reference) if set_names else []
    item_names = [n for n in metric_names if n in METRICS]
    multi = any(isinstance(item, MultiItem) for item in items)
    identity = [n for n in item_names if METRICS[n].identity]
    unfit = [n for n in item_names if multi and n not in identity and n not in WHOLE_IMAGE_METRICS]
    if unfit:
        fit = [*(n for n in METRICS if METRICS[n].identity), *WHOLE_IMAGE_METRICS]
        raise ValueError(f"{', '.join(unfit)} do not apply to multi-subject items; they take {', '.join(fit)}")
    state = PartialState(cpu=not torch.cuda.is_available())
    device = device or str(state.device)
    registry = {
        **METRICS,
        "lpips_bg": dataclasses.replace(
            METRICS["lpips_bg"],
            build=lambda weights, dev: BackgroundLPIPS(weights, dev, detector, segmenter, box_threshold),
        ),
    }
    metrics = build_metrics(item_names, {k: v for k, v in models.items() if k in METRICS}, device, registry)
    cropper = SubjectCropper(crop, device) if crop else None
    set_metrics = build_metrics(set_names, {k: v for k, v in models.items() if k in SET_METRICS}, device, SET_METRICS)
    out.mkdir(parents=True, exist_ok=True)
    # Every process reads all records (the merged file and any shard left by an interrupted run, whatever the
    # number of processes then); a rescored item's last record wins.
    shards = sorted(out.glob("items.*.jsonl"))
    latest = {r["item"]: r for path in [out / ITEMS_FILE, *shards] for r in read_records(path)}
    done = {i for i, r in latest.items() if set(item_names) <= set(r["metrics"])}
    pending = [item for item in items if item.id not in done]
    missing = [item.id for item in pending if not generated_images(generated, item)]
    todo = [item for item in pending if item.id not in missing]
    shard = out / f"items.{state.process_index}.jsonl"
    # All processes must split the same todo list: nobody writes a record before everyone has read.
    state.wait_for_everyone()
    _drop_partial_tail(shard)
    with state.split_between_processes(todo) as mine:
        for item in tqdm(mine, desc="scoring", unit="item", disable=not (progress and state.is_main_process)):
            paths = generated_images(generated, item)
            images = [read_rgb(p) for p in paths]
            record = {
                "item": item.id,
                "subject": item.subject,
                "prompt": item.prompt,
                "images": [str(p.relative_to(generated)) for p in paths],
            }
            if isinstance(item, MultiItem):
                record.update(score_multi_item(images, item, metrics, identity, cropper))
            else:
                subjects = images
                if cropper is not None:
                    crops = (cropper(img, item.class_name) for img in images)
                    subjects, record["crop_boxes"] = zip(*crops, strict=True)
                record["metrics"] = {
                    name: metric(list(subjects) if isinstance(metric, IdentityMetric) else images, item)
                    for name, metric in metrics.items()
                }
            _append(shard, record)
    state.wait_for_everyone()
    if state.is_main_process:
        records = _merge(out, items)
        summarized = summary_names(item_names, identity, cropper is not None) if multi else item_names
        rows = summarize(records, summarized)
        generated_files = [generated / path for r in records for path in r["images"]]
        for name, metric in set_metrics.items():
            value = metric(generated_files, reference_files)
            rows.append({"metric": name, "mean": value, "sem": math.nan, "n": len(generated_files)})
        write_summary(out, rows, missing, optimization_rows(optimizations) if optimizations else None)
        (out / "plots").mkdir(exist_ok=True)
        for name in summarized:
            values = [r["metrics"][name] for r in records if name in r["metrics"]]
            histogram(values, name).save(out / "plots" / f"{name}.png")
    state.wait_for_everyone()
    rows = json.loads((out / "summary.json").read_text())["metrics"]
    if missing:
        raise SuiteError(
            f"{len(missing)} of {len(items)} items have no images under {generated} (first: {missing[0]}); "
            f"the other items are scored in {out}"
        )
    return rows
