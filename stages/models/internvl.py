"""InternVL (transformers-native): InternViT, pixel-shuffle projector, Qwen2 or Llama LM."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from transformers import InternVLForConditionalGeneration, InternVLProcessor

from .base import FamilyAdapter, layers_reaching


class InternVLAdapter(FamilyAdapter):
    family = "internvl"
    model_class = InternVLForConditionalGeneration
    processor_class = InternVLProcessor
    vision_layers_path = r"model\.vision_tower\.encoder\.layer"
    vision_attention = {
        "attention.q_proj": "q",
        "attention.k_proj": "k",
        "attention.v_proj": "v",
        "attention.projection_layer": "o",
    }
    image_handling = "dynamic tiles (aspect-ratio grid, up to max_patches) + a thumbnail"

    def _cap_tiles(self, max_tiles: int) -> None:
        self.image_processor.max_patches = max_tiles

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        # The tiled input ends with this very view (use_thumbnail): the image resized to one tile.
        return self.image_processor(images, crop_to_patches=False, return_tensors="pt")

    def _vision_layers_used(self) -> int:
        return layers_reaching(self.model.config.vision_feature_layer, len(self.vision_layers()))

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        """Tiles of all samples are stacked; each tile writes image_seq_length context tokens."""
        tiles = (batch["input_ids"] == self.model.config.image_token_id).sum(dim=1) // self.processor.image_seq_length
        return torch.repeat_interleave(torch.arange(len(tiles), device=tiles.device), tiles)
