"""SISO's losses: the similarity networks (`siso.losses.embeddings`; the paper's GUIE model: `siso.losses.guie`), the
similarity loss built from them (`siso.losses.similarity`), the loss of several subjects in their boxes
(`siso.losses.composition`), the math of several photos and of negative targets that both share
(`siso.losses.negatives`) and the fast loss's tiny VAE decoder (`siso.losses.tiny_vae`)."""

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
from siso.losses.guie import GuieEmbedding, GuieNet, describe_ir, is_guie_checkpoint
from siso.losses.negatives import NegativeTargets, Photos, negative_loss
from siso.losses.networks import LossNetworks
from siso.losses.similarity import SIMILARITY_NETS, SimilarityLoss, load_ir, load_nets

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
    "GuieEmbedding",
    "GuieNet",
    "LossNetworks",
    "NegativeTargets",
    "Photos",
    "SimilarityLoss",
    "clip_vision_config",
    "describe_ir",
    "is_guie_checkpoint",
    "load_ir",
    "load_nets",
    "negative_loss",
    "preprocess",
    "presence_term",
]
