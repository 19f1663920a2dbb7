"""`siso.losses.networks.LossNetworks`: the similarity networks loaded once, every run's loss built on them."""

import pytest
import torch

from siso.config import NegativeSettings, SimilaritySettings
from siso.losses import LossNetworks

from .helpers import GENERIC, PHOTOS, _images, _photo


def test_loss_networks_pass_the_negatives_through(model_dirs):
    settings = SimilaritySettings(dino_model=str(model_dirs["dino"]), ir_model=str(model_dirs["clip"]))
    networks = LossNetworks(settings, "cpu", torch.float32)
    negatives = NegativeSettings(kinds=("blur", "generic"))
    first = networks.loss([PHOTOS], negatives=negatives, generic=[GENERIC])
    assert {"negative/blur", "negative/generic"} <= set(first(_images()))
    second = networks.loss([_photo(3)], negatives=negatives, generic=[GENERIC[:1]])
    # The next subject's loss runs on the same networks, loaded once.
    assert all(second.nets[name] is first.nets[name] for name in first.nets)
    assert second.references["dino"].shape[0] == 1
    assert second.targets.generic["dino"].shape[0] == 1
    with pytest.raises(ValueError, match="generic negative needs generic images"):
        networks.loss([_photo(3)], negatives=negatives)
