"""The models runs need, loaded at first use and kept for the runs that follow (`Models`): the app and ``eval run``
hold one for their whole life, a command holds one for its one run."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from siso.backbones import Backbone, load_backbone
from siso.compose import Subject
from siso.config import SisoConfig
from siso.losses.embeddings import ClipImageEmbedding
from siso.losses.networks import LossNetworks
from siso.runs.negatives import generic_negatives
from siso.vision.grounding import DEFAULT_DETECTOR
from siso.vision.segmenter import ObjectSegmenter


class Models:
    """A backbone and the similarity networks, each loaded at its first use and reused after.

    Args:
        backbone: An already loaded backbone without LoRA (the app's, the tests'); else the first run's
            ``config.model`` is loaded.
        networks: Similarity networks already loaded (`LossNetworks`); else those of the first run that needs them.
    """

    def __init__(self, backbone: Backbone | None = None, networks: LossNetworks | None = None):
        self._backbone = backbone
        self._networks = networks
        self._generic: dict[tuple, dict[str, list[Image.Image]]] = {}  # settings -> class -> images
        self._checks: dict[str, ClipImageEmbedding] = {}  # check model -> its network
        self._segmenters: dict[tuple, ObjectSegmenter] = {}  # (detector, segmenter, threshold) -> the models

    @property
    def loaded(self) -> Backbone | None:
        """The backbone, if one is loaded (nothing is loaded by asking)."""
        return self._backbone

    def backbone(self, config: SisoConfig) -> Backbone:
        """The backbone: ``config``'s model, loaded at the first call, then the same one.

        Raises:
            siso.hub.ModelLoadError: the model cannot be loaded.
        """
        if self._backbone is None:
            self._backbone = load_backbone(
                config.model, config.dtype, config.device, config.resolution, config.memory.quantize
            )
        return self._backbone

    def check_resolution(self, resolution: int | None, learned: str) -> None:
        """Refuse saved subjects learned at ``resolution`` px when the loaded backbone draws at another (``None``: not
        recorded, or nothing loaded yet: the backbone loads at the subjects' resolution).

        Args:
            resolution: What the subjects were learned at.
            learned: Who learned it, for the message (``"runs/dog/lora was"``, ``"the subjects were"``).

        Raises:
            ValueError: naming both resolutions.
        """
        loaded = self._backbone
        if loaded is not None and resolution not in (None, loaded.resolution):
            raise ValueError(f"{learned} learned at {resolution} px; these models draw at {loaded.resolution} px")

    def drop_backbone(self) -> None:
        """Forget the backbone (the next run loads it again), e.g. one that carries another subject's IP-Adapter."""
        self._backbone = None

    def networks(self, config: SisoConfig) -> LossNetworks:
        """The similarity networks of ``config.similarity`` on the backbone's device and dtype, loaded at the first
        loss built on them; loaded again only when a run asks for other ones."""
        backbone = self.backbone(config)
        if self._networks is None or not self._networks.serves(config.similarity, backbone.device, backbone.dtype):
            self._networks = LossNetworks(config.similarity, backbone.device, backbone.dtype)
        return self._networks

    def check_network(self, model: str) -> ClipImageEmbedding:
        """The CLIP image network ``model`` (a refine's check, `siso.config.RefineSettings.check_model`) on the
        backbone's device in fp32, loaded at the first call for it.

        Raises:
            siso.hub.ModelLoadError: it cannot be loaded, or it is not CLIP.
        """
        if model not in self._checks:
            self._checks[model] = ClipImageEmbedding.from_pretrained(
                model, device=self._backbone.device, what="check model (--check-model)"
            )
        return self._checks[model]

    def segmenter(self, detector: str, segmenter: str, box_threshold: float) -> ObjectSegmenter:
        """Grounding DINO ``detector`` and SAM ``segmenter`` (a refine's region finders) on the backbone's device,
        loaded at the first call for them.

        Raises:
            siso.hub.ModelLoadError: one cannot be loaded.
        """
        key = (detector, segmenter, box_threshold)
        if key not in self._segmenters:
            self._segmenters[key] = ObjectSegmenter(detector, segmenter, self._backbone.device, box_threshold)
        return self._segmenters[key]

    def generic(
        self,
        config: SisoConfig,
        subjects: Sequence[Subject],
        classes: Sequence[str | None] | None = None,
        detector: str = DEFAULT_DETECTOR,
    ) -> list[list[Image.Image]] | None:
        """Per subject, the generic images of the ``generic`` negative (`siso.runs.negatives.generic_negatives`), each
        class's drawn once for all the runs on these models; ``None`` when ``config.negatives`` has none. Call it
        while the backbone carries no LoRA and no IP-Adapter: they must be the frozen model's."""
        if not config.negatives.generic:
            return None
        opt = config.optim
        key = (config.model, config.resolution, opt.seed, opt.num_inference_steps, opt.grad_steps)
        key += (opt.guidance_scale, config.negatives.generic_images)
        drawn = self._generic.setdefault(key, {})
        return generic_negatives(self.backbone(config), config, subjects, classes, detector, drawn)
