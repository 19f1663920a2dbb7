"""SISO's losses: the similarity networks (`siso.losses.embeddings`), the similarity loss built from them
(`siso.losses.similarity`) and the fast loss's tiny VAE decoder (`siso.losses.tiny_vae`)."""

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
from siso.losses.similarity import SIMILARITY_NETS, SimilarityLoss, SubjectLosses

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIMILARITY_NETS",
    "ClipImageEmbedding",
    "DinoEmbedding",
    "Embedding",
    "SimilarityLoss",
    "SubjectLosses",
    "clip_vision_config",
    "preprocess",
]
