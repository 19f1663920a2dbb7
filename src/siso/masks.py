"""The mask of the object to replace in an editing scene photo: from a file, a box, or detected and segmented.

Every mask is a boolean numpy array of shape (H, W) in the pixels of the photo it describes (True = object). The
detected mask follows the SISO paper's protocol: Grounding DINO finds "a {object}." (box threshold 0.3) and SAM
segments the top box; the largest connected region is kept and its holes are filled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from transformers import SamModel, SamProcessor

from siso.eval.crop import DEFAULT_DETECTOR, SubjectCropper
from siso.hub import load_pretrained, require_model_type

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_SEGMENTER",
    "OBJECT_LABELS",
    "MaskError",
    "ObjectSegmenter",
    "box_mask",
    "clean_mask",
    "dilate",
    "load_mask",
]

DEFAULT_SEGMENTER = "facebook/sam-vit-base"

# Candidate names for `ObjectSegmenter.name_object`: the DreamBooth and ImagenHub subject classes plus common
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


class MaskError(ValueError):
    """A mask that cannot be used; the message says why and what to do."""


def _checked(mask: np.ndarray, what: str) -> np.ndarray:
    if not mask.any():
        raise MaskError(f"{what} covers no pixel: mark the object to replace (white in a mask file)")
    if mask.all():
        raise MaskError(f"{what} covers every pixel, so nothing of the photo would be kept: mark only the object")
    return mask


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a mask image (white = object) for a scene photo of ``size``.

    Any mode is read: 16-bit images are thresholded at half their range, all others are converted to 8-bit
    luminance and thresholded at 127. A mask of another size but the photo's aspect ratio (within 1 %) is resized
    to it (nearest neighbour).

    Args:
        path: The mask image file.
        size: ``(width, height)`` of the scene photo.

    Returns:
        (height, width) bool array, True on the object.

    Raises:
        MaskError: The file is missing, unreadable or damaged, its aspect ratio differs from the photo's, or the mask
            covers no pixel or every pixel.
    """
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file {path} not found: pass an existing image file (white = object)")
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # Pillow clips these to 255 when making "L"
                mask = np.asarray(img) > 32767
            else:
                mask = np.asarray(img.convert("L")) > 127
    except (OSError, SyntaxError) as err:
        raise MaskError(f"cannot read mask {path}: {err}; save it as a PNG or JPEG") from None
    height, width = mask.shape
    if (width, height) != tuple(size):
        if abs(width * size[1] / (height * size[0]) - 1) > 0.01:
            raise MaskError(
                f"mask {path} is {width}x{height} but the photo is {size[0]}x{size[1]}: their aspect ratios differ; "
                "draw the mask on the photo itself"
            )
        resized = Image.fromarray(mask).resize(tuple(size), Image.Resampling.NEAREST)
        mask = np.asarray(resized).astype(bool)
    return _checked(mask, f"mask {path}")


def box_mask(box: str | Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The mask of a box: every pixel the box touches (fractional edges round outwards).

    Args:
        box: ``"x0,y0,x1,y1"`` or four numbers, in pixels of the scene photo (corners, not centres).
        size: ``(width, height)`` of the scene photo.

    Returns:
        (height, width) bool array, True inside the box.

    Raises:
        MaskError: Not four finite numbers, an empty box, a box outside the photo, or one covering all of it.
    """
    width, height = size
    try:
        values = [float(v) for v in (box.split(",") if isinstance(box, str) else box)]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4:
        raise MaskError(f"box {box!r} is not 4 numbers: write it as x0,y0,x1,y1 in pixels of the photo")
    if not all(math.isfinite(v) for v in values):
        raise MaskError(f"box {box!r} has a non-finite number: write it as x0,y0,x1,y1 in pixels of the photo")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise MaskError(f"box {box!r} is empty: it needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise MaskError(
            f"box {box!r} reaches outside the {width}x{height} photo: keep it within 0..{width}, 0..{height}"
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
    return _checked(mask, f"box {box!r}")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a mask by a disk: a pixel is set when it lies within ``pixels`` (Euclidean) of a set pixel.

    Args:
        mask: (H, W) bool array.
        pixels: Radius of the disk; 0 returns the mask unchanged.

    Returns:
        (H, W) bool array.

    Raises:
        ValueError: ``pixels`` is negative.
    """
    if pixels < 0:
        raise ValueError(f"dilation must be 0 or more pixels, got {pixels}")
    offsets = torch.arange(-pixels, pixels + 1)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= pixels**2).float()
    grown = F.conv2d(torch.from_numpy(mask).float()[None, None], disk[None, None], padding=pixels)
    return grown[0, 0].numpy() > 0.5  # sums of 0/1 are exact in float32


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the largest connected region (4-connected) of a mask and fill its holes.

    Args:
        mask: (H, W) bool array.

    Returns:
        (H, W) bool array; all False when ``mask`` is.
    """
    regions, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    largest = np.bincount(regions.ravel())[1:].argmax() + 1
    return ndimage.binary_fill_holes(regions == largest)


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
        tokenizer = self.detector.processor.tokenizer
        inputs = self.detector.processor(images=image.convert("RGB"), text=text, return_tensors="pt").to(self.device)
        ids = inputs["input_ids"][0].cpu()
        limit = self.detector.model.config.max_text_len
        if len(ids) > limit:
            raise ValueError(
                f"{len(labels)} labels make {len(ids)} text tokens; the detector reads {limit}: pass fewer"
            )
        with torch.no_grad():
            probs = self.detector.model(**inputs).logits[0, :, : len(ids)].sigmoid().cpu()  # (queries, tokens)
        # Phrase i is the tokens after the i-th ".": the dots and [CLS]/[SEP] belong to no label.
        dots = ids == tokenizer.convert_tokens_to_ids(".")
        phrase = dots.cumsum(0) - dots.long()
        words = ~dots & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
        scores = torch.stack([probs[:, words & (phrase == i)].amax(-1) for i in range(len(labels))], -1)
        if scores.max() <= self.detector.box_threshold:
            return None
        return labels[int(scores.max(0).values.argmax())]
