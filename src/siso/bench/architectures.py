"""Each named backbone and the similarity networks at their published architectures, with random weights.

``configs/<model>.json`` holds the ``config.json`` values of every component of the model's Hub repository (and its
scheduler's), ``configs/similarity.json`` those of DINOv2-L and the CLIP ViT-H/14 vision tower, ``tiny-vae.json``
those of the fast loss's TAESD decoders: small files, so the
benchmark builds real-size models offline on any machine. Compute and memory do not depend on the weight values.

The tokenizers are stand-ins (one token per word, padded as the real ones pad): CLIP prompts are always 77 tokens and
T5 prompts 256, as with the real tokenizers; Sana's instruction prefix comes out a little shorter than Gemma's.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import diffusers
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from siso.backbones import BACKBONES, Backbone
from siso.backbones.sana import COMPLEX_HUMAN_INSTRUCTION

CONFIGS = Path(__file__).parent / "configs"
MODELS = ("sd-turbo", "sdxl-turbo", "flux-schnell", "sana")


@cache
def published_config(name: str) -> dict:
    """The components' classes and configs of backbone ``name`` (or ``similarity``)."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def build_component(spec: dict, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A diffusers or transformers model from its class name and config, random weights, frozen."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype``: no fp32 copy at real size
    try:
        with torch.device(device):
            if spec["library"] == "diffusers":
                module = getattr(diffusers, spec["class"]).from_config(spec["config"])
            else:
                cls = getattr(transformers, spec["class"])
                module = cls(cls.config_class.from_dict(spec["config"]))
    finally:
        torch.set_default_dtype(default)
    return module.eval().requires_grad_(False)


def _tokenizer(vocab_size: int, max_length: int, kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose ids stay below ``vocab_size``: words of the prompts and of Sana's instruction."""
    text = " ".join(COMPLEX_HUMAN_INSTRUCTION).lower() if kind == "gemma" else ""
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    specials = {"clip": ["<|startoftext|>", "<|endoftext|>"], "t5": ["<pad>", "</s>", "<unk>"]}.get(
        kind, ["<pad>", "<eos>", "<bos>", "<unk>"]
    )
    vocab = {token: i for i, token in enumerate([*specials, *words][: vocab_size - 1])}
    unk = {"clip": "<|endoftext|>", "t5": "<unk>"}.get(kind, "<unk>")
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if kind == "clip":
        backend.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
        )
        tokens = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    elif kind == "t5":
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tokens = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    else:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
        tokens = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length, **tokens)


def _tokenizer_for(encoder: dict) -> PreTrainedTokenizerFast:
    config = encoder["config"]
    if encoder["class"].startswith("CLIP"):
        return _tokenizer(config["vocab_size"], 77, "clip")
    if encoder["class"].startswith("T5"):
        return _tokenizer(config["vocab_size"], 512, "t5")
    return _tokenizer(config["vocab_size"], 8192, "gemma")


def build_backbone(name: str, device: str | torch.device, dtype: torch.dtype, resolution: int = 512) -> Backbone:
    """Backbone ``name`` (``sd-turbo``, ``sdxl-turbo``, ``flux-schnell``, ``sana``) at its published architecture,
    random weights, on ``device`` in ``dtype``, behind the same `Backbone` class `siso.backbones.load_backbone`
    returns."""
    if name not in MODELS:
        raise ValueError(f"no published architecture for {name!r}; known: {', '.join(MODELS)}")
    spec = published_config(name)
    torch.manual_seed(0)
    parts: dict = {n: build_component(c, device, dtype) for n, c in spec["components"].items()}
    for component, encoder in spec["components"].items():
        if component.startswith("text_encoder"):
            parts[component.replace("text_encoder", "tokenizer")] = _tokenizer_for(encoder)
    scheduler = spec["scheduler"]
    parts["scheduler"] = getattr(diffusers, scheduler["class"]).from_config(scheduler["config"])
    pipeline = getattr(diffusers, spec["pipeline"])
    if spec["pipeline"] == "StableDiffusionPipeline":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif spec["pipeline"] == "StableDiffusionXLPipeline":
        parts.update(add_watermarker=False)
    cls = BACKBONES[name][1]

    def load_component(component: str) -> torch.nn.Module:  # a freed text encoder, built again (random anyway)
        return build_component(spec["components"][component], device, dtype)

    return cls(pipeline(**parts), resolution, load_component)


def tiny_vae_models() -> list[str]:
    """The backbones whose fast loss has a tiny VAE decoder (``configs/tiny-vae.json``)."""
    return [name for name in published_config("tiny-vae") if not name.startswith("_")]


def check_tiny_vae(name: str) -> None:
    """Raise ValueError unless backbone ``name``'s fast loss has a tiny VAE decoder (Sana's has none)."""
    if name not in tiny_vae_models():
        raise ValueError(f"the fast loss has no tiny VAE decoder for {name}; it has for {', '.join(tiny_vae_models())}")


def build_tiny_vae(name: str, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The fast loss's tiny VAE decoder for backbone ``name`` (TAESD's architecture), random weights.

    Raises:
        ValueError: as `check_tiny_vae`.
    """
    check_tiny_vae(name)
    return build_component(published_config("tiny-vae")[name], device, dtype)


def build_similarity(device: str | torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """DINOv2-L (``dino``) and the CLIP ViT-H/14 vision tower with projection (``ir``), random weights."""
    return {name: build_component(spec, device, dtype) for name, spec in published_config("similarity").items()}
