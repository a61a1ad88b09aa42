"""Tiny random-weight models of each family, saved as normal HF folders (for tests and the
synthetic benchmark's base)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaConfig,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
)

from .base import ModelFamilyError
from .registry import FAMILIES
from .tokenizer import build_byte_tokenizer


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny model; the defaults train quickly on a CPU."""

    lm_layers: int = 8
    lm_hidden: int = 128
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_intermediate: int = 256
    vision_layers: int = 4
    vision_hidden: int = 64
    vision_heads: int = 2
    vision_intermediate: int = 128
    image_size: int = 32
    patch_size: int = 8
    vocab_size: int | None = None  # None: the byte tokenizer's; larger gives a real model's embedding shapes

    def __post_init__(self) -> None:
        if self.image_size % (2 * self.patch_size):
            raise ValueError("image_size must be a multiple of 2 * patch_size (2x2 token merge in InternVL, Qwen2-VL)")
        if self.vision_intermediate % self.vision_hidden:
            raise ValueError("vision_intermediate must be a multiple of vision_hidden (Qwen2-VL mlp_ratio)")


def _lm(size: TinySize, tokenizer) -> dict:
    return dict(
        vocab_size=max(size.vocab_size or 0, len(tokenizer)),
        hidden_size=size.lm_hidden,
        intermediate_size=size.lm_intermediate,
        num_hidden_layers=size.lm_layers,
        num_attention_heads=size.lm_heads,
        num_key_value_heads=size.lm_kv_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _vit(size: TinySize) -> dict:
    return dict(
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )


def _llava(size: TinySize, tokenizer):
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**_vit(size)),
        text_config=LlamaConfig(**_lm(size, tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        vision_feature_layer=-1,  # every vision layer reaches the projector
    )
    side = {"height": size.image_size, "width": size.image_size}
    return config, CLIPImageProcessorPil(size={"shortest_edge": size.image_size}, crop_size=side)


def _internvl(size: TinySize, tokenizer):
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(**_vit(size)),
        text_config=Qwen2Config(**_lm(size, tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2 // 4,
    )
    return config, GotOcr2ImageProcessorPil(size={"height": size.image_size, "width": size.image_size})


def _qwen2vl(size: TinySize, tokenizer):
    half = size.lm_hidden // size.lm_heads // 2  # M-RoPE splits half a head into (t, h, w)
    t = half // 4
    h = (half - t) // 2
    mrope_section = [t, h, half - t - h]
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.lm_hidden,
            num_heads=size.vision_heads,
            mlp_ratio=size.vision_intermediate // size.vision_hidden,
            patch_size=size.patch_size,
        ),
        text_config=dict(**_lm(size, tokenizer), rope_parameters=dict(rope_type="default", mrope_section=mrope_section)),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    factor = size.patch_size * 2  # spatial merge 2x2
    processor = Qwen2VLImageProcessorPil(
        patch_size=size.patch_size, merge_size=2, min_pixels=factor**2, max_pixels=size.image_size**2
    )
    return config, processor


# family -> (config and image-processor builder, what its chat template writes for an image)
_BUILDERS = {
    "llava": (_llava, "<image>"),
    "internvl": (_internvl, "<IMG_CONTEXT>"),
    "qwen2vl": (_qwen2vl, "<|vision_start|><|image_pad|><|vision_end|>"),
}


def build_tiny(family: str, out_dir: Path, *, seed: int = 0, size: TinySize = TinySize()) -> Path:
    """Build a random-weight model of `family` and save it, loadable by `load_family`."""
    if family not in _BUILDERS:
        raise ModelFamilyError(f"unknown family {family!r}; supported: {', '.join(_BUILDERS)}")
    builder, image_markup = _BUILDERS[family]
    tokenizer = build_byte_tokenizer(image_markup)
    config, image_processor = builder(size, tokenizer)
    torch.manual_seed(seed)
    model = FAMILIES[family].model_class(config)
    model.generation_config.update(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    FAMILIES[family](model, tokenizer, image_processor).save(Path(out_dir))
    return Path(out_dir)
