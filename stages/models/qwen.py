"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: a ViT with fused qkv over packed patches, min/max-pixel resizing."""

from __future__ import annotations

import dataclasses
from math import isqrt

import torch
from PIL import Image
from torch import Tensor
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from .base import FamilyAdapter


class Qwen2VLAdapter(FamilyAdapter):
    family = "qwen2vl"
    model_class = Qwen2VLForConditionalGeneration
    processor_class = Qwen2VLProcessor
    vision_layers_path = r"model\.visual\.blocks"
    vision_attention = {"attn.qkv": "qkv", "attn.proj": "o"}
    image_handling = "native resolution within min/max pixels, patches packed, 2x2 merge"
    projector_paths = ("model.visual.merger",)  # the patch merger inside the vision model
    embed_image_size = 448  # side of the square whole-image view for the sequence representation

    @property
    def _merge_factor(self) -> int:
        return self.image_processor.patch_size * self.image_processor.merge_size

    def _thumbnail_side(self) -> int:
        side = min(self.embed_image_size, isqrt(self.image_processor.size["longest_edge"]))
        return side // self._merge_factor * self._merge_factor

    def _cap_tiles(self, max_tiles: int) -> None:
        # No tiles here: cap the pixels at max_tiles whole-image views.
        size, longest = self.image_processor.size, max_tiles * self._thumbnail_side() ** 2
        # a dict up to transformers 5.2x, a SizeDict dataclass from 5.25: replaced in kind
        self.image_processor.size = (
            dataclasses.replace(size, longest_edge=longest)
            if dataclasses.is_dataclass(size)
            else {**size, "longest_edge": longest}
        )

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        side = self._thumbnail_side()
        views = [im.resize((side, side), Image.Resampling.BICUBIC) for im in images]
        return self.image_processor(views, return_tensors="pt")

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        """The vision blocks see every image's patches packed on one axis: t*h*w rows per image."""
        grid = batch["image_grid_thw"]
        return torch.repeat_interleave(torch.arange(len(grid), device=grid.device), grid.prod(dim=-1))


class Qwen25VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    processor_class = Qwen2_5_VLProcessor
    vision_mlp = {"mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_up", "mlp.down_proj": "mlp_down"}
    image_handling = "as Qwen2-VL, windowed attention in the ViT"


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_class = Qwen3VLForConditionalGeneration
    processor_class = Qwen3VLProcessor
    vision_mlp = {"mlp.linear_fc1": "mlp_up", "mlp.linear_fc2": "mlp_down"}
    image_handling = "as Qwen2-VL with 16-pixel patches; DeepStack features from inner ViT layers"
    projector_paths = ("model.visual.merger", "model.visual.deepstack_merger_list")
