"""Qwen2-VL: ViT with fused qkv and a patch merger, Qwen2 LM with M-RoPE."""

from __future__ import annotations

from math import isqrt

from PIL import Image
import torch
from torch import Tensor
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

from .base import FamilyAdapter


class Qwen2VLAdapter(FamilyAdapter):
    family = "qwen2vl"
    model_type = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    image_processor_class = Qwen2VLImageProcessorPil
    vision_layers_path = r"model\.visual\.blocks"
    vision_attention = {"attn.qkv": "qkv", "attn.proj": "o"}
    image_markup = "<|image_pad|>"
    embed_image_size = 448  # thumbnail side for vision_features, capped by the processor's max pixels

    @property
    def d_vision(self) -> int:
        return self.model.config.vision_config.embed_dim

    def _pixels(self, images: list[Image.Image]) -> tuple[dict[str, Tensor], list[int]]:
        out = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
        grid = out["image_grid_thw"]
        counts = (grid.prod(-1) // self.image_processor.merge_size**2).tolist()
        return {"pixel_values": out["pixel_values"], "image_grid_thw": grid}, counts

    def _image_span(self, n_features: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id) * n_features

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        """The vision blocks see every image's patches packed on one axis: t*h*w rows per image."""
        grid = batch["image_grid_thw"]
        return torch.repeat_interleave(torch.arange(len(grid), device=grid.device), grid.prod(dim=-1))

    def _extra_inputs(self, input_ids: Tensor) -> dict[str, Tensor]:
        # transformers 5.x requires token types (1 = image) whenever image_grid_thw is given.
        return {"mm_token_type_ids": (input_ids == self.model.config.image_token_id).int()}

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        self.model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])

    def _thumbnail_size(self) -> int:
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        side = min(self.embed_image_size, isqrt(self.image_processor.size["longest_edge"]))
        return side // factor * factor
