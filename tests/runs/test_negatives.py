"""The generic negatives: images of the subject's class drawn once by the frozen model."""

import numpy as np
import pytest
from PIL import Image

from siso.backbones import load_backbone
from siso.compose import Subject, first_image
from siso.runs.negatives import draw_generic, generic_negatives


@pytest.fixture(scope="module")
def backbone(model_dirs):
    return load_backbone(str(model_dirs["sd"]), "fp32", "cpu")


def _config(make_config, **negatives):
    config = make_config("sd")
    config.negatives.kinds = ("generic",)
    for name, value in negatives.items():
        setattr(config.negatives, name, value)
    return config


def test_generic_images_are_the_class_prompt_from_other_seeds(backbone, make_config):
    config = _config(make_config, generic_images=3)
    config.train_prompt = "a photo of a dog"
    images = draw_generic(backbone, config, "dog")
    assert len(images) == 3 and all(image.size == (32, 32) for image in images)
    arrays = [np.asarray(image) for image in images]
    assert not np.array_equal(arrays[0], arrays[1])  # seeds seed + 1, seed + 2, ...
    start = np.asarray(first_image(backbone, config))  # the same prompt at the run's own seed
    assert all(not np.array_equal(start, array) for array in arrays)
    config.optim.seed = 1  # seed + 1 of the run's seed 0 is seed 1's own image
    assert np.array_equal(np.asarray(first_image(backbone, config)), arrays[0])
    assert np.array_equal(
        np.asarray(draw_generic(backbone, _config(make_config, generic_images=3), "dog")[1]), arrays[1]
    )


def test_one_draw_per_class(backbone, make_config, monkeypatch):
    drawn = []
    monkeypatch.setattr("siso.runs.negatives.draw_generic", lambda b, c, name: drawn.append(name) or [name])
    photo = Image.new("RGB", (64, 64))
    subjects = [Subject(photo, "dog"), Subject(photo, "cat"), Subject(photo, "dog")]
    assert generic_negatives(backbone, _config(make_config), subjects) == [["dog"], ["cat"], ["dog"]]
    assert drawn == ["dog", "cat"]
    assert generic_negatives(backbone, _config(make_config), subjects[:1], ["bird"]) == [["bird"]]
