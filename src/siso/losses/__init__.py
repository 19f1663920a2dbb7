"""SISO's losses: the similarity networks (`siso.losses.embeddings`), the similarity loss built from them
(`siso.losses.similarity`), the loss of several subjects in their boxes (`siso.losses.composition`) and the fast
loss's tiny VAE decoder (`siso.losses.tiny_vae`)."""

from siso.losses.composition import CompositionLoss, presence_term
from siso.losses.embeddings import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipImageEmbedding,
    DinoEmbedding,
    Embedding,
    clip_vision_config,
    preprocess,
)
from siso.losses.similarity import SIMILARITY_NETS, SimilarityLoss, SubjectLosses, load_nets

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIMILARITY_NETS",
    "ClipImageEmbedding",
    "CompositionLoss",
    "DinoEmbedding",
    "Embedding",
    "SimilarityLoss",
    "SubjectLosses",
    "clip_vision_config",
    "load_nets",
    "preprocess",
    "presence_term",
]
