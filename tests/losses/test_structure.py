"""The refine's structure term (DINOv2 patch self-similarity on each region's crop): zero for the input itself, grows
with a constructed change of layout, barely moves for a change of colour, and its gradient reaches the image."""

import pytest
import torch

from siso.losses.embeddings import DinoEmbedding
from siso.losses.structure import StructureLoss, self_similarity

from .helpers import PHOTOS


@pytest.fixture(scope="module")
def dino(model_dirs):
    return DinoEmbedding.from_pretrained(str(model_dirs["dino"]), 28)


@pytest.fixture(scope="module")
def target() -> torch.Tensor:
    from siso.images import pil_to_tensor

    return pil_to_tensor(PHOTOS[0])  # (1, 3, 32, 32)


def test_self_similarity_is_the_cosine_of_every_pair():
    tokens = torch.randn(2, 5, 8)
    similarity = self_similarity(tokens)
    assert similarity.shape == (2, 5, 5)
    expected = torch.nn.functional.cosine_similarity(tokens[0, 1], tokens[0, 3], dim=0)
    torch.testing.assert_close(similarity[0, 1, 3], expected)
    torch.testing.assert_close(similarity.diagonal(dim1=1, dim2=2), torch.ones(2, 5))


def test_zero_for_the_input_itself_and_growing_with_a_change_of_layout(dino, target):
    loss = StructureLoss(dino, target, [(4, 4, 28, 28), (0, 0, 32, 32)])
    assert loss(target).tolist() == [0.0]
    moved = target.flip(-1).flip(-2)  # the region's content turned upside down: the same colours, another layout
    values = [float(loss(target + share * (moved - target))) for share in (0.25, 0.5, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_a_batch_scores_each_image_on_every_region(dino, target):
    loss = StructureLoss(dino, target, [(4, 4, 28, 28), (8, 0, 32, 20)])
    other = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    batch = loss(torch.cat([target, other]))
    assert batch.shape == (2,)
    assert batch[0] == 0 and batch[1] > 0
    torch.testing.assert_close(batch[1], loss(other)[0])


def test_the_gradient_reaches_the_region_only(dino, target):
    loss = StructureLoss(dino, target, [(4, 4, 20, 20)])
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    loss(image).sum().backward()
    assert image.grad[..., 4:20, 4:20].abs().sum() > 0
    outside = image.grad.clone()
    outside[..., 4:20, 4:20] = 0
    assert outside.abs().sum() == 0


@pytest.mark.parametrize("boxes", [[], [(0, 0, 0, 10)], [(0, 0, 33, 10)], [(-1, 0, 10, 10)]])
def test_bad_regions_are_refused(dino, target, boxes):
    with pytest.raises(ValueError, match="region|box"):
        StructureLoss(dino, target, boxes)
