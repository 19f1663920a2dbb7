"""Scoring a multi-subject item (`siso.eval.multi.MultiItem`): identity per subject on its box, whether every box
looks most like its own subject and how much the others leak into it, and, with a detector, where each subject was
found.

Per item and identity metric ``m`` (``dino``, ``clip_i``, ...), in the record's ``metrics``:

- ``m/<subject>``: the metric's usual protocol (mean cosine, every image x every real photo of the subject) on the
  crop of the subject's box, the box in whole pixels of each generated image (`siso.compose.Box.pixels`);
- ``m`` and ``m_min``: their mean and their minimum over the item's subjects;
- ``success`` (items with several subjects, decided by the first identity metric asked for, the record's
  ``success_metric``): the share of the item's images where every subject's crop is more similar (mean cosine over
  the real photos) to its own subject's photos than to any other subject's of the item;
- ``leakage`` (the same items, the same metric): how much another subject shows in a subject's box, beyond how alike
  the two subjects are: ``mean over images and ordered pairs k != j of max(0, s(crop_k, photos_j) - s(photos_k,
  photos_j))``, where ``s`` is the mean cosine over every pair of embeddings (the composition loss's leakage term,
  `siso.losses.CompositionLoss`, with no margin, on one network); 0 when every box looks no more like another subject
  than its own subject's photos do;
- with a detector: ``iou/<subject>``, the IoU of the subject's detected box with its requested one (0 where no box of
  its class was found), and ``iou``, ``iou_min`` over the subjects.

Whole-image metrics (``clip_t``) score the whole images with the item's prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from siso.compose import PixelBox, iou
from siso.eval.metrics import IdentityMetric
from siso.eval.multi import MultiItem
from siso.vision.grounding import SubjectCropper

# The per-item metrics that need only the whole image and the prompt, so they score a multi-subject item as they do a
# single one.
WHOLE_IMAGE_METRICS = ("clip_t",)


def summary_names(item_names: Sequence[str], identity: Sequence[str], detector: bool) -> list[str]:
    """The per-item metrics a multi-subject suite's summary reports, for the metrics asked for (``item_names``), of
    which ``identity`` are identity metrics."""
    names = [n for name in item_names for n in ([name, f"{name}_min"] if name in identity else [name])]
    return [*names, *(["success", "leakage"] if identity else []), *(["iou", "iou_min"] if detector else [])]


def match_detections(
    requested: Sequence[PixelBox], classes: Sequence[str], found: dict[str, list[list[float]]]
) -> list[list[float] | None]:
    """Give each subject one detected box of its class, each box to one subject at most: the pairs of highest IoU
    with the requested box first (so two subjects of one class do not both take the same box).

    Args:
        requested: Per subject, its requested box (x0, y0, x1, y1) in pixels.
        classes: Per subject, its class.
        found: Class -> the boxes the detector found for it, in the same pixels.

    Returns:
        Per subject, its detected box, or ``None`` when no box of its class is left.
    """
    pairs = [
        (iou(box, requested[k]), k, name, d)
        for k, name in enumerate(classes)
        for d, box in enumerate(found.get(name, []))
    ]
    matched: list[list[float] | None] = [None] * len(requested)
    used = set()
    for _, k, name, d in sorted(pairs, key=lambda pair: -pair[0]):
        if matched[k] is None and (name, d) not in used:
            matched[k] = found[name][d]
            used.add((name, d))
    return matched


def score_multi_item(
    images: list[Image.Image],
    item: MultiItem,
    metrics: dict[str, Callable],
    identity: Sequence[str],
    detector: SubjectCropper | None = None,
) -> dict:
    """Score one multi-subject item's generated images.

    Args:
        images: The item's generated images (RGB, any size).
        item: The item.
        metrics: Name -> built metric (`siso.eval.metrics.build_metrics`): identity metrics and whole-image ones.
        identity: The names in ``metrics`` that are identity metrics (`IdentityMetric`); the first decides
            ``success`` and ``leakage``.
        detector: Grounding DINO, to find each subject's class in the images (location accuracy).

    Returns:
        The record's fields: ``boxes`` (per image, per subject, the requested box in whole pixels), ``metrics``, and
        with several subjects and an identity metric ``success_metric`` (the one that decided ``success`` and
        ``leakage``); with a detector ``detected_boxes`` (per image, per subject, the matched box or null).
    """
    subjects = item.subjects
    names = [s.subject for s in subjects]
    boxes = [[s.box.pixels(*img.size) for s in subjects] for img in images]
    crops = [[img.crop(b[k]) for img, b in zip(images, boxes, strict=True)] for k in range(len(subjects))]
    values, record = {}, {"boxes": [[list(box) for box in b] for b in boxes]}
    for name, metric in metrics.items():
        if name not in identity:
            values[name] = metric(images, item)
            continue
        per_subject = [metric(crops[k], s) for k, s in enumerate(subjects)]
        values.update({f"{name}/{subject}": v for subject, v in zip(names, per_subject, strict=True)})
        values[name], values[f"{name}_min"] = sum(per_subject) / len(per_subject), min(per_subject)
    if identity and len(subjects) > 1:
        values["success"], values["leakage"] = _separation(metrics[identity[0]], crops, item)
        record["success_metric"] = identity[0]
    if detector is not None:
        classes = [s.class_name for s in subjects]
        detected, ious = [], []
        for img, requested in zip(images, boxes, strict=True):
            found = {name: [box for box, _ in detector.detect_all(img, name)] for name in dict.fromkeys(classes)}
            matched = match_detections(requested, classes, found)
            detected.append(matched)
            ious.append([iou(m, r) if m is not None else 0.0 for m, r in zip(matched, requested, strict=True)])
        per_subject = [sum(column) / len(column) for column in zip(*ious, strict=True)]
        values.update({f"iou/{subject}": v for subject, v in zip(names, per_subject, strict=True)})
        values["iou"], values["iou_min"] = sum(per_subject) / len(per_subject), min(per_subject)
        record["detected_boxes"] = detected
    record["metrics"] = values
    return record


def _separation(metric: IdentityMetric, crops: list[list[Image.Image]], item: MultiItem) -> tuple[float, float]:
    """``success`` (the share of images where every subject's crop is closer to its own photos than to any other
    subject's) and ``leakage`` (the mean excess likeness of a crop to another subject, see the module's docstring)."""
    references = [metric.references(s) for s in item.subjects]
    # (K, N, K): mean cosine of subject k's crop in image n with subject j's photos.
    features = [metric.features(c) for c in crops]
    similarity = torch.stack([torch.stack([(f @ r.T).mean(1) for r in references], dim=1) for f in features])
    own = torch.arange(len(crops))
    mine = similarity[own, :, own]  # (K, N)
    others = similarity.clone()
    others[own, :, own] = -torch.inf
    success = float((mine > others.amax(-1)).all(0).float().mean())
    alike = torch.stack([torch.stack([(a @ b.T).mean() for b in references]) for a in references])  # (K, K)
    excess = (similarity - alike[:, None, :]).clamp(min=0)  # (K, N, K)
    pairs = ~torch.eye(len(crops), dtype=torch.bool, device=similarity.device)
    return success, float(excess.permute(1, 0, 2)[:, pairs].mean())
