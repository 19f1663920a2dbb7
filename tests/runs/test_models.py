"""`siso.runs.models.Models`: the backbone and the similarity networks loaded at their first use and kept for the runs
after it, and the generic negatives of a class drawn once."""

import dataclasses

import numpy as np

from siso.compose import Subject
from siso.config import NegativeSettings
from siso.runs.models import Models


def test_the_backbone_and_networks_load_once_and_are_reused(make_config):
    config = make_config("sd")
    models = Models()
    assert models.loaded is None  # nothing loads before a run asks
    backbone = models.backbone(config)
    assert models.loaded is backbone and models.backbone(config) is backbone
    networks = models.networks(config)
    assert models.networks(config) is networks
    # A run with other similarity settings gets its own networks, kept in turn.
    other = dataclasses.replace(config, similarity=dataclasses.replace(config.similarity, dino_resolution=28))
    renewed = models.networks(other)
    assert renewed is not networks and renewed.settings == other.similarity and models.networks(other) is renewed
    models.drop_backbone()
    assert models.loaded is None and models.backbone(config) is not backbone
    # A backbone given is the one every run uses: nothing is loaded, not even a model that does not exist.
    assert Models(backbone).backbone(dataclasses.replace(config, model="/nonexistent/model")) is backbone


def test_generic_images_of_a_class_are_drawn_once_for_every_run(make_config, subject):
    config = make_config("sd")
    models = Models()
    assert models.generic(config, [Subject(subject, "dog")]) is None  # no generic negative: nothing drawn
    config.negatives = NegativeSettings(kinds=("generic",), generic_images=2)
    (dog,) = models.generic(config, [Subject(subject, "dog")])
    assert len(dog) == 2
    cat, again = models.generic(config, [Subject(subject, "cat"), Subject(subject, "dog")])
    assert all(a is b for a, b in zip(again, dog, strict=True))  # the dog's images, not drawn again
    assert len(cat) == 2 and not any(c is d for c, d in zip(cat, dog, strict=True))
    # Other settings of the frozen model's draw (its seed): drawn anew.
    config.optim.seed = 1
    (reseeded,) = models.generic(config, [Subject(subject, "dog")])
    assert not any(r is d for r, d in zip(reseeded, dog, strict=True))
    assert not np.array_equal(np.asarray(reseeded[0]), np.asarray(dog[0]))
