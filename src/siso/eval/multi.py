"""Multi-subject items (several subjects in one image, each in a fixed box) and the ``dreambench-multi`` suite built
from the DreamBench folder (`siso.eval.suites.load_dreambench_multi` reads the photos).

Item id ``<subject A>+<subject B>/<prompt index, 2 digits>`` (e.g. ``dog+backpack/03``); every item of the suite
uses `PAIR_LAYOUT`: subject A in the left box, subject B in the right one, as fractions of the image's sides, so an
image of any size is scored against the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from siso.compose import Box
from siso.config import MAX_SUBJECTS

# (subject A, subject B, kind): DreamBench folder names. Living: DreamBench's cats and dogs; "similar" pairs share a
# class or a look (a dog and a stuffed animal, two sneakers), the hard case for keeping identities apart.
PAIRS = (
    ("dog", "dog2", "living, same class"),
    ("cat", "cat2", "living, same class"),
    ("cat", "dog", "living, similar classes"),
    ("dog", "backpack", "living + object, dissimilar"),
    ("cat2", "teapot", "living + object, dissimilar"),
    ("dog6", "colorful_sneaker", "living + object, dissimilar"),
    ("dog8", "bear_plushie", "living + object, similar look"),
    ("backpack", "backpack_dog", "objects, same class"),
    ("bear_plushie", "wolf_plushie", "objects, same class"),
    ("teapot", "vase", "objects, similar classes"),
    ("fancy_boot", "shiny_sneaker", "objects, similar classes"),
    ("robot_toy", "candle", "objects, dissimilar"),
)

# Prompt templates naming both subjects: {0} and {1} are subject A's and B's "<unique token> <class>".
MULTI_PROMPTS = (
    "a {0} and a {1} in the jungle",
    "a {0} and a {1} on the beach",
    "a {0} and a {1} in the snow",
    "a {0} and a {1} on a cobblestone street",
    "a {0} and a {1} on top of a wooden floor",
)

# Subject A left, subject B right: side by side with a small gap, from 20 % to 90 % of the image's height.
PAIR_LAYOUT = (Box(0.02, 0.2, 0.48, 0.9), Box(0.52, 0.2, 0.98, 0.9))


@dataclass(frozen=True)
class BoxedSubject:
    """One subject of a multi-subject item.

    Attributes:
        subject: Subject name (its photo folder), unique within the item: metrics are named by it (``dino/dog2``).
        class_name: Its class (``dog``), for prompts, the loss terms' names and the detector.
        references: All real photos of the subject; the first (sorted by name) is the one a method is given.
        box: Where it goes, in fractions of the image's sides.
    """

    subject: str
    class_name: str
    references: tuple[Path, ...]
    box: Box

    def __post_init__(self):
        if not self.references:
            raise ValueError(f"subject {self.subject!r} has no photo")
        if not self.box.fractional:
            raise ValueError(f"subject {self.subject!r}: box {self.box} must be in fractions of the image's sides")

    @property
    def photo(self) -> Path:
        """The one photo a single-image method is given."""
        return self.references[0]


@dataclass(frozen=True)
class MultiItem:
    """Several subjects in one image, each in its fixed box, and a prompt naming them all.

    Attributes:
        id: Stable id, also the item's folder under the generated root (``dog+backpack/03``).
        prompt: The prompt to generate.
        subjects: The subjects, in prompt order.

    Raises:
        ValueError: no subject, more than `siso.config.MAX_SUBJECTS`, or a subject named twice.
    """

    id: str
    prompt: str
    subjects: tuple[BoxedSubject, ...]

    def __post_init__(self):
        names = [s.subject for s in self.subjects]
        if not 1 <= len(names) <= MAX_SUBJECTS:
            raise ValueError(f"item {self.id} has {len(names)} subjects; 1 to {MAX_SUBJECTS} compose one image")
        if len(set(names)) != len(names):
            raise ValueError(f"item {self.id} names a subject twice: {', '.join(names)}")

    @property
    def subject(self) -> str:
        """The subjects' names joined by ``+`` (``dog+backpack``): the item's group, as a single item's subject."""
        return "+".join(s.subject for s in self.subjects)

    @property
    def train_prompt(self) -> str:
        """The two-stage protocol's prompt: ``a photo of a dog and a backpack``."""
        return "a photo of " + " and ".join(f"a {s.class_name}" for s in self.subjects)


def pair_items(
    classes: dict[str, str], photos: dict[str, list[Path]], unique_token: str = "", pairs=PAIRS, prompts=MULTI_PROMPTS
) -> list[MultiItem]:
    """The items of every pair x prompt, subject A in `PAIR_LAYOUT`'s left box and B in the right one.

    Args:
        classes: Subject name -> class, for every subject of ``pairs``.
        photos: Subject name -> its photos, sorted.
        unique_token: Inserted before each class name in the prompts ('' for siso).
        pairs: ``(A, B, kind)`` triples.
        prompts: Templates with ``{0}`` and ``{1}``.
    """
    items = []
    for a, b, _ in pairs:
        subjects = tuple(
            BoxedSubject(name, classes[name], tuple(photos[name]), box)
            for name, box in zip((a, b), PAIR_LAYOUT, strict=True)
        )
        for index, template in enumerate(prompts):
            named = [f"{unique_token} {s.class_name}" for s in subjects]
            prompt = " ".join(template.format(*named).split())
            items.append(MultiItem(f"{a}+{b}/{index:02d}", prompt, subjects))
    return items
