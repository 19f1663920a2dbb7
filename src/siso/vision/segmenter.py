"""Detected masks, the SISO paper's protocol: Grounding DINO finds "a {object}." (box threshold 0.3) and SAM segments
the top box; the largest connected region is kept and its holes are filled. The same detector names the subject of a
photo (`ObjectSegmenter.name_object`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import SamModel, SamProcessor

from siso.devices import own_cpu_memory
from siso.hub import load_pretrained, require_model_type
from siso.vision.grounding import DEFAULT_DETECTOR, OBJECT_LABELS, SubjectCropper
from siso.vision.masks import clean_mask

__all__ = ["DEFAULT_DETECTOR", "DEFAULT_SEGMENTER", "OBJECT_LABELS", "ObjectSegmenter"]

DEFAULT_SEGMENTER = "facebook/sam-vit-base"


class ObjectSegmenter:
    """Find an object by name with Grounding DINO and segment it with SAM (the SISO paper's masks).

    Built once, then called per image: ``mask = segmenter.segment(image, "dog")``.

    Attributes:
        detector: The Grounding DINO `SubjectCropper` (its ``box_threshold`` applies to `name_object` too).
        model: The SAM model.
        processor: Its `SamProcessor`.
    """

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        device: str | torch.device = "cpu",
        box_threshold: float = 0.3,
    ) -> None:
        """Load Grounding DINO and SAM with their processors.

        Args:
            detector: Hub id or local directory of a Grounding DINO checkpoint.
            segmenter: Hub id or local directory of a SAM checkpoint.
            device: Where both models run.
            box_threshold: Minimum detection score (the paper uses 0.3).

        Raises:
            siso.hub.ModelLoadError: A checkpoint is missing (not cached while offline) or incomplete.
        """
        self.device = torch.device(device)
        self.detector = SubjectCropper(detector, self.device, box_threshold)
        # Weights before the processor, as in SubjectCropper: only the model loader's error names the fix.
        require_model_type(segmenter, "SAM object segmenter", "sam", "SAM")
        self.model = load_pretrained(SamModel.from_pretrained, segmenter, "SAM object segmenter")
        self.processor = load_pretrained(SamProcessor.from_pretrained, segmenter, "SAM processor")
        self.model.to(self.device).eval().requires_grad_(False)
        own_cpu_memory(self.model)

    def detect_box(self, image: Image.Image, name: str) -> list[float] | None:
        """The top-scoring box ``[x0, y0, x1, y1]`` for "a {name}." in pixels of ``image``, or None."""
        found = self.detector.detect(image, name)
        return None if found is None else found[0]

    def segment_box(self, image: Image.Image, box: Sequence[float]) -> np.ndarray:
        """SAM's mask of the object in ``box``: its best mask (highest predicted IoU), cleaned by `clean_mask`.

        Args:
            image: Any PIL image (converted to RGB).
            box: ``[x0, y0, x1, y1]`` in pixels of ``image``.

        Returns:
            (height, width) bool array; all False when SAM marks nothing (the caller decides what that means).
        """
        inputs = self.processor(
            images=image.convert("RGB"), input_boxes=[[[float(v) for v in box]]], return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs, multimask_output=True)
        # pred_masks: (1 image, 1 box, 3, h, w) low-resolution logits, upscaled to the image by the processor.
        masks = self.processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0][0]
        best = int(outputs.iou_scores[0, 0].argmax())
        return clean_mask(masks[best].numpy())

    def segment(self, image: Image.Image, name: str) -> np.ndarray | None:
        """Detect "a {name}." and segment the top box (`segment_box`); None when nothing is detected."""
        box = self.detect_box(image, name)
        return None if box is None else self.segment_box(image, box)

    def name_object(self, image: Image.Image, labels: Sequence[str] = OBJECT_LABELS) -> str | None:
        """The detector's `SubjectCropper.name_object`."""
        return self.detector.name_object(image, labels)
