"""Grounding DINO: detect a subject by its class name, and crop it out of an image (the SISO paper's protocol).

The paper (section 4) scores identity (DINO, IR, CLIP-I) on the subject only: it detects "a {class}." with
``IDEA-Research/grounding-dino-tiny`` at box threshold 0.3 and crops the top-scoring box. Cropping keeps a large
background from dominating the similarity of small subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from siso.devices import own_cpu_memory
from siso.hub import load_pretrained, require_model_type

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"


# Candidate names for `SubjectCropper.name_object`: the DreamBooth and ImagenHub subject classes plus common
# objects. All of them go into one detector text, which must stay within Grounding DINO's 256 tokens.
OBJECT_LABELS = (
    "dog",
    "cat",
    "bird",
    "rabbit",
    "backpack",
    "bag",
    "teddy bear",
    "stuffed animal",
    "plushie",
    "toy",
    "robot",
    "doll",
    "figurine",
    "sneaker",
    "shoe",
    "boot",
    "sunglasses",
    "glasses",
    "hat",
    "teapot",
    "vase",
    "bowl",
    "cup",
    "mug",
    "bottle",
    "can",
    "candle",
    "clock",
    "lamp",
    "book",
    "cartoon",
    "car",
    "ball",
    "pillow",
    "chair",
    "flower",
)


class SubjectCropper:
    """Detect a subject by its class name and crop the most confident box.

    Built once, then called per image: ``crop, box = cropper(image, "dog")``.

    Attributes:
        box_threshold: A box is kept when its best token score is strictly above this.
        text_threshold: Token score above which a token counts towards a box's label (labels are not used here; the
            value is passed on so results match transformers' zero-shot detection output).
    """

    def __init__(
        self,
        model: str = DEFAULT_DETECTOR,
        device: str | torch.device = "cpu",
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
    ) -> None:
        """Load the detector and its processor.

        Args:
            model: Hub id or local directory of a Grounding DINO checkpoint with its processor.
            device: Where the detector runs.
            box_threshold: Minimum box score (the paper uses 0.3).
            text_threshold: Minimum token score for box labels.

        Raises:
            siso.hub.ModelLoadError: The checkpoint is missing (not cached while offline), or its directory lacks
                the weights or the processor files.
        """
        self.device = torch.device(device)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        # Weights first: for an empty directory AutoProcessor raises ValueError, which load_pretrained does not
        # translate, while the model loader raises OSError and so gets the clear ModelLoadError.
        require_model_type(model, "Grounding DINO subject detector", "grounding-dino", "Grounding DINO")
        self.model = load_pretrained(
            GroundingDinoForObjectDetection.from_pretrained, model, "Grounding DINO subject detector"
        )
        self.processor = load_pretrained(AutoProcessor.from_pretrained, model, "Grounding DINO processor")
        self.model.to(self.device).eval().requires_grad_(False)
        own_cpu_memory(self.model)

    @staticmethod
    def prompt(class_name: str) -> str:
        """The detection text for a class: "a {class}." (Grounding DINO wants lowercase phrases ending in a dot)."""
        return f"a {class_name.strip().lower()}."

    def detect_all(self, image: Image.Image, class_name: str) -> list[tuple[list[float], float]]:
        """Every box for ``class_name`` above the threshold, best first.

        Args:
            image: Any PIL image (converted to RGB for the detector).
            class_name: The subject's class, e.g. "dog" or "backpack".

        Returns:
            ``[([x0, y0, x1, y1], score), ...]`` with each box in pixels of ``image``, clamped to it.
        """
        rgb = image.convert("RGB")  # the processor's normalisation assumes 3 channels (L, RGBA, P would fail)
        inputs = self.processor(images=rgb, text=self.prompt(class_name), return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        # target_sizes is (height, width): boxes come back in pixels of the original image, not the resized input.
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width)],
        )[0]
        scores, boxes = result["scores"].cpu(), result["boxes"].cpu()
        # Predicted centres/sizes can reach past the border; clamp so the crop never pads with black.
        limits = torch.tensor([image.width, image.height, image.width, image.height], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        order = scores.argsort(descending=True, stable=True)
        return [(boxes[i].tolist(), float(scores[i])) for i in order]

    def detect(self, image: Image.Image, class_name: str) -> tuple[list[float], float] | None:
        """The highest-scoring box for ``class_name`` and its score (`detect_all`'s first), or None when no box passes
        the threshold."""
        found = self.detect_all(image, class_name)
        return found[0] if found else None

    def __call__(self, image: Image.Image, class_name: str) -> tuple[Image.Image, list[float] | None]:
        """Crop the subject.

        Args:
            image: The image to crop (any mode; the crop keeps the mode).
            class_name: The subject's class, e.g. "dog".

        Returns:
            ``(crop, box)``: ``box`` is ``[x0, y0, x1, y1]`` in whole pixels (``crop == image.crop(box)``), at least
            1 px wide and high. When nothing is detected: ``(image, None)``, the full image unchanged, so the caller
            can still score it and record that no crop happened.
        """
        found = self.detect(image, class_name)
        if found is None:
            return image, None
        x0, y0, x1, y1 = (round(v) for v in found[0])
        # Rounding can collapse a sub-pixel box to zero size, and PIL would return an empty image that the
        # metrics cannot resize: widen it to one pixel, inside the image.
        x0, y0 = min(x0, image.width - 1), min(y0, image.height - 1)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        box = [float(v) for v in (x0, y0, x1, y1)]
        return image.crop((x0, y0, x1, y1)), box

    def name_object(self, image: Image.Image, labels: Sequence[str] = OBJECT_LABELS) -> str | None:
        """Name the most confidently detected object: one Grounding DINO pass over all labels ("dog. cat. ...").

        A box's score for a label is its best token score within that label's phrase; the label of the highest
        (box, label) score wins.

        Args:
            image: Any PIL image (converted to RGB).
            labels: Candidate names, lowercase phrases without dots.

        Returns:
            The winning entry of ``labels``, or None when no score passes the box threshold.

        Raises:
            ValueError: The labels take more text tokens than the detector reads (it would ignore the last ones).
        """
        text = " ".join(f"{label}." for label in labels)
        tokenizer = self.processor.tokenizer
        inputs = self.processor(images=image.convert("RGB"), text=text, return_tensors="pt").to(self.device)
        ids = inputs["input_ids"][0].cpu()
        limit = self.model.config.max_text_len
        if len(ids) > limit:
            raise ValueError(
                f"{len(labels)} labels make {len(ids)} text tokens; the detector reads {limit}: pass fewer"
            )
        with torch.no_grad():
            probs = self.model(**inputs).logits[0, :, : len(ids)].sigmoid().cpu()  # (queries, tokens)
        # Phrase i is the tokens after the i-th ".": the dots and [CLS]/[SEP] belong to no label.
        dots = ids == tokenizer.convert_tokens_to_ids(".")
        phrase = dots.cumsum(0) - dots.long()
        words = ~dots & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
        scores = torch.stack([probs[:, words & (phrase == i)].amax(-1) for i in range(len(labels))], -1)
        if scores.max() <= self.box_threshold:
            return None
        return labels[int(scores.max(0).values.argmax())]
