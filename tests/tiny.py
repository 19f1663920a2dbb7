"""Tiny, seeded, *real* diffusers/transformers models saved as local directories, for offline tests.

Each `make_*` builder writes a directory that the ordinary loaders read without network access
(`StableDiffusionPipeline.from_pretrained(dir)`, `Dinov2Model.from_pretrained(dir)`, ...), so code under test takes
exactly the path it takes with the real checkpoints. The configs copy the real models' *layout* (block types,
schedulers, activation functions, tokenizer padding) and shrink only the widths, modelled on the dummy components in
diffusers' own fast tests. `torch.manual_seed(0)` runs before each component so a directory's weights do not depend
on which other components were built first.

Sizes: pipelines generate 32x32 px images (16x16 latents, VAE downsampling factor 2), which is also their default
size, except FLUX, whose pipeline default is fixed at 128 x the VAE factor (256 px): pass 32 px explicitly there. The
vision encoders take 28x28 px images (7x7 patches of 4 px).
"""

import inspect
import json
import string
from os import PathLike
from pathlib import Path

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderTiny,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, trainers
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoProcessor,
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamProcessor,
    SamPromptEncoderConfig,
    SamVisionConfig,
    SwinConfig,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    ViTConfig,
    ViTModel,
)
from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "tokenizer"  # written by fixtures/make_tokenizer.py

# Schedulers as in the real turbo checkpoints' scheduler_config.json (steps_offset=1 also keeps
# StableDiffusionPipeline from warning and rewriting the config at load time).
_SCHEDULER_KW = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


def make_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The fixture CLIP BPE tokenizer (790 tokens; any text encodes, unknown words fall back to bytes).

    transformers 5 wants `vocab=`/`merges=` file paths; the old `vocab_file=` names silently build a 2-token
    tokenizer. Without `model_max_length` the pipelines would pad prompts to ~1e30 tokens.
    """
    return CLIPTokenizer(
        vocab=str(TOKENIZER_DIR / "vocab.json"),
        merges=str(TOKENIZER_DIR / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )


def _text_config(tokenizer: CLIPTokenizer, hidden_act: str, **kw) -> CLIPTextConfig:
    # Special-token ids come from the tokenizer: with eos_token_id != 2 transformers pools at the first EOS.
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,  # SDXL reads hidden_states[-2], so at least two layers keep that a real layer output
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kw,
    )


def _vae(latent_channels: int = 4, **kw) -> AutoencoderKL:
    # Two blocks -> one downsampling -> factor 2: 32 px images <-> 16x16x4 latents.
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        sample_size=32,
        **kw,
    )


def make_sd_turbo(path: str | PathLike) -> Path:
    """A tiny stabilityai/sd-turbo (SD 2.1 layout) saved as a StableDiffusionPipeline directory; returns its path."""
    path = Path(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,  # latent size: the pipeline's default output is sample_size * vae factor = 32 px
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # SD 2.1 puts attention in the high-resolution blocks and none in the lowest one.
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,  # = text encoder hidden size
        attention_head_dim=(2, 4),  # diffusers' misnomer: the number of heads per block
        use_linear_projection=True,  # SD 2.x
    )
    # SD 2.x uses OpenCLIP ViT-H (gelu) and its tokenizer pads with "!" rather than <|endoftext|>.
    tokenizer = make_tokenizer(pad_token="!")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(tokenizer, "gelu"))
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER_KW),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def make_tiny_vae(path: str | PathLike, latent_channels: int = 4) -> Path:
    """A tiny madebyollin/taesd (``latent_channels=16``: taef1): an AutoencoderTiny with the tiny pipelines'
    downsampling factor 2 (two blocks, one up/downsampling); returns its path."""
    path = Path(path)
    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(16, 16),
        decoder_block_out_channels=(16, 16),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=latent_channels,
    ).save_pretrained(path)
    # diffusers writes `block_out_channels` (an alias it sets itself) and warns about it on loading; the Hub's
    # taesd/taef1 configs do not have it.
    config = json.loads((path / "config.json").read_text())
    del config["block_out_channels"]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def make_sdxl_turbo(path: str | PathLike) -> Path:
    """A tiny stabilityai/sdxl-turbo saved as a StableDiffusionXLPipeline directory; returns its path."""
    path = Path(path)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # SDXL has no attention in the highest-resolution block.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=64,  # both text encoders' hidden states concatenated: 32 + 32
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # 6 micro-conditioning ids (original size, crop top-left, target size; 2 each) * 8 + pooled text (32).
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    # As in SDXL: encoder 1 is OpenAI CLIP ViT-L (quick_gelu, pads with <|endoftext|>), encoder 2 is OpenCLIP bigG
    # (gelu, pads with "!") and adds the text projection whose output is the pooled embedding.
    tokenizer, tokenizer_2 = make_tokenizer(), make_tokenizer(pad_token="!")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(tokenizer, "quick_gelu"))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, "gelu", projection_dim=32))
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),  # the SDXL VAE's latent scale
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**_SCHEDULER_KW),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # never depend on the optional invisible-watermark package
    )
    pipe.save_pretrained(path)
    return path


T5_WORDS = ["a", "photo", "of", "dog", "cat", "backpack", "subject", "on", "in", "the", "beach", "moon", "paris"]


def make_t5_tokenizer() -> T5Tokenizer:
    """A T5 Unigram tokenizer (pad, eos, unk at ids 0-2 as in T5) over whole test words plus single characters.

    Built from a ``tokenizers`` Unigram vocabulary, so no sentencepiece model is needed; ``extra_ids=0`` keeps the
    100 sentinel tokens (which would lie outside this vocabulary) out.
    """
    word_start = "\u2581"  # sentencepiece's marker of a word's first piece
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (word_start, -2.0)]
    vocab += [(word_start + word, -1.0) for word in T5_WORDS]
    vocab += [(char, -5.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def make_flux_schnell(path: str | PathLike, guidance_embeds: bool = False) -> Path:
    """A tiny black-forest-labs/FLUX.1-schnell saved as a FluxPipeline directory; returns its path.

    1 double-stream + 1 single-stream block (2 heads of 16), the real 16-channel VAE latents with its shift and scale,
    CLIP-L-like and T5-like text encoders of width 32, and schnell's scheduler config. ``guidance_embeds=True`` gives
    a FLUX.1-dev-like (guidance-distilled) transformer instead.
    """
    path = Path(path)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # = T5 d_model
        pooled_projection_dim=32,  # = CLIP hidden size
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, like (16, 56, 56) for 128
    )
    tokenizer = make_tokenizer()  # CLIP ViT-L: quick_gelu, pads with <|endoftext|>
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(tokenizer, "quick_gelu"))
    tokenizer_2 = make_t5_tokenizer()
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as google/t5-v1_1-xxl
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    # The FLUX VAE: 16 latent channels, no quant convs, latents shifted then scaled.
    vae = _vae(
        latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False
    )
    # FLUX.1-schnell's scheduler_config.json: no resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=False,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path)
    return path


# Every prompt the tests use, and the instruction SanaPipeline prefixes to prompts: the corpus the tiny Gemma BPE
# merges are trained on (any other text still encodes, through byte fallback).
GEMMA_CORPUS = [
    *inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default,
    "a photo of a dog",
    "a dog on the beach",
    "a dog in Paris",
    "a dog on the moon",
]


def make_gemma_tokenizer() -> GemmaTokenizer:
    """A Gemma-layout BPE tokenizer (ids 0-4 <pad> <eos> <bos> <unk> <mask>, then 256 byte-fallback tokens, then ~300
    trained characters and merges; 556 tokens), trained in a few ms on `GEMMA_CORPUS` without sentencepiece.

    As Gemma's, it adds <bos> and no <eos>, and text is one "word" with spaces written as "▁".
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Replace(" ", "▁")  # as GemmaTokenizer's, so the merges see the same text
    bpe.train_from_iterator(GEMMA_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    vocab = {token: i for i, token in enumerate([*specials, *(f"<0x{b:02X}>" for b in range(256))])}
    for token in sorted(bpe.get_vocab(), key=bpe.get_vocab().get):
        vocab.setdefault(token, len(vocab))
    merges = json.loads(bpe.to_str())["model"]["merges"]
    return GemmaTokenizer(vocab=vocab, merges=[tuple(m) for m in merges], add_bos_token=True)


def make_sana(path: str | PathLike) -> Path:
    """A tiny Efficient-Large-Model/Sana_1600M_512px saved as a SanaPipeline directory; returns its path.

    1-layer Sana transformer (patch size 1, linear self-attention, 16x16 latents), a 2-stage DC-AE (factor 2, 4 latent
    channels, the real one's two block kinds and scaling factor), a 2-layer Gemma-2 and the real model's scheduler.
    """
    path = Path(path)
    tokenizer = make_gemma_tokenizer()
    torch.manual_seed(0)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,  # Gemma-2 alternates sliding-window and global attention layers
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            query_pre_attn_scalar=8,
            max_position_embeddings=1024,  # instruction + 256 prompt tokens
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,  # = text encoder hidden size
        sample_size=16,  # latent size: 16 * vae factor 2 = 32 px
        patch_size=1,
    )
    torch.manual_seed(0)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=8,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        downsample_block_type="Conv",
        upsample_block_type="interpolate",
        scaling_factor=0.41407,
    )
    # As diffusers' scripts/convert_sana_to_diffusers.py builds it (flow shift 3 below 4K px; the rest class defaults).
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    pipe.save_pretrained(path)
    return path


def make_dino(path: str | PathLike) -> Path:
    """A tiny DINOv2 ViT (28 px input, 7x7 patches, hidden 32) saved with save_pretrained; returns its path."""
    path = Path(path)
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=4,  # Dinov2Config has no intermediate_size; 4 is the real models' ratio
        patch_size=4,
        image_size=28,
    )
    Dinov2Model(config).save_pretrained(path)
    return path


def make_clip_vision(path: str | PathLike) -> Path:
    """A tiny CLIP vision tower with projection (28 px input, 16-d image embeds) saved with save_pretrained."""
    path = Path(path)
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=4,
        image_size=28,
        projection_dim=16,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    return path


def make_dino_v1(path: str | PathLike) -> Path:
    """A tiny DINO (v1) ViT like facebook/dino-vits16, no pooler (28 px input, hidden 32) saved with save_pretrained."""
    path = Path(path)
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        patch_size=4,
        image_size=28,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def make_clip(path: str | PathLike) -> Path:
    """A tiny full CLIPModel (text + vision, 16-d projections) with the fixture tokenizer, like
    openai/clip-vit-base-patch32: loadable as CLIPTextModelWithProjection, CLIPVisionModelWithProjection and
    CLIPTokenizer from one folder."""
    path = Path(path)
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        # Each sub-config carries projection_dim too: the *WithProjection classes read theirs from the sub-config.
        text_config=_text_config(tokenizer, "quick_gelu", projection_dim=16).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=4,
            image_size=28,
            projection_dim=16,
        ).to_dict(),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


BERT_WORDS = ["a", "dog", "cat", "backpack", "photo", "of", "the"]


def bert_vocab() -> dict[str, int]:
    """A tiny uncased BERT WordPiece vocabulary laid out like ``bert-base-uncased``'s first 1030 entries.

    Grounding DINO hard-codes the ids of [CLS] (101), [SEP] (102), "." (1012) and "?" (1029) to split the prompt into
    phrases, so those tokens must sit at the real ids; the gaps are the real vocabulary's [unusedN] tokens.
    """
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 994)]
    tokens += [chr(c) for c in range(33, 64)]  # "!" .. "?": ids 999..1029 as in BERT, so "." is 1012
    tokens += BERT_WORDS
    return {token: i for i, token in enumerate(tokens)}


def make_grounding_dino(path: str | PathLike) -> Path:
    """Save a ~0.2M-parameter Grounding DINO (Swin backbone, BERT text encoder, 10 queries) and its processor."""
    path = Path(path)
    tokenizer = BertTokenizer(vocab=bert_vocab())
    assert tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "."]) == [101, 102, 1012]
    # Four Swin stages, the last three fed to the detector as in grounding-dino-tiny, plus one extra strided level.
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        encoder_layers=1,
        decoder_layers=2,  # decoder box heads are tied to layer 0's; one layer leaves nothing to tie and fails
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=1,
        decoder_n_points=1,
        num_queries=10,
        max_text_len=32,
    )
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    # 96 px short side: the extra strided feature level must stay above 1x1 (a square 64 px input would make it
    # 1x1), or GroupNorm rejects it.
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 160})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_sam(path: str | PathLike) -> Path:
    """Save a ~22k-parameter SAM (2-layer ViT on 64 px inputs, 8 px patches, 16-wide mask decoder) and its processor.

    The layout is sam-vit-base's scaled down: windowed attention with one global layer, an 8x8 image embedding and
    32x32 low-resolution masks (the real model: 64x64 and 256x256 for 1024 px inputs).
    """
    path = Path(path)
    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=8,
        mlp_ratio=2.0,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16
    )
    torch.manual_seed(0)
    SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    ).save_pretrained(path)
    # The PIL class directly: without torchvision, SamImageProcessor falls back to it with a warning.
    image_processor = SamImageProcessorPil(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 32},
        mask_pad_size={"height": 32, "width": 32},
    )
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return path


def make_ip_adapter(path: str | PathLike, unet: UNet2DConditionModel) -> Path:
    """A tiny h94/IP-Adapter for ``unet`` in the Hub repo's SDXL layout; returns the folder (``model`` of
    `siso.config.IPAdapterSettings`, whose default weight file it holds).

    ``sdxl_models/ip-adapter_sdxl.safetensors`` holds the keys ``load_ip_adapter`` reads: ``image_proj.*`` (the
    ``ImageProjection`` from the image embedding to 4 tokens of the UNet's cross-attention width) and
    ``ip_adapter.{k}.to_k_ip/to_v_ip.weight`` for each cross-attention layer, numbered 1, 3, 5, ... in the order of
    ``unet.attn_processors`` as diffusers' own tests build them (``create_ip_adapter_state_dict``).
    ``sdxl_models/image_encoder`` is a CLIP vision tower with projection (28 px, 16-d embeds); with no feature
    extractor in the pipeline, ``load_ip_adapter`` makes a ``CLIPImageProcessor`` of the encoder's 28 px.
    """
    path = Path(path)
    cross = unet.config.cross_attention_dim
    torch.manual_seed(0)
    state = {}
    key_id = 1
    for name in unet.attn_processors:  # diffusers' order: what its loader numbers the same way
        if name.endswith("attn1.processor"):  # self-attention has no image branch
            continue
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        else:
            index = int(name.split(".")[1])
            channels = unet.config.block_out_channels
            hidden = (channels if block == "down_blocks" else list(reversed(channels)))[index]
        for kind in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{kind}.weight"] = torch.nn.Linear(cross, hidden, bias=False).weight.detach()
        key_id += 2
    encoder_dir = make_clip_vision(path / "sdxl_models" / "image_encoder")
    embed_dim = CLIPVisionConfig.from_pretrained(encoder_dir).projection_dim
    torch.manual_seed(0)
    projection = torch.nn.Linear(embed_dim, 4 * cross)  # 4 image tokens, as every h94 IP-Adapter (not "plus")
    norm = torch.nn.LayerNorm(cross)
    state["image_proj.proj.weight"] = projection.weight.detach()
    state["image_proj.proj.bias"] = projection.bias.detach()
    state["image_proj.norm.weight"] = norm.weight.detach()
    state["image_proj.norm.bias"] = norm.bias.detach()
    save_file({k: v.contiguous() for k, v in state.items()}, path / "sdxl_models" / "ip-adapter_sdxl.safetensors")
    return path
