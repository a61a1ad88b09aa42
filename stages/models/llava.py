"""LLaVA-1.5 (CLIP, one image), LLaVA-NeXT and LLaVA-OneVision (any-resolution tiles)."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .base import CLIP_ATTENTION, FamilyAdapter, layers_reaching

# transformers 5 CLIP and SigLIP vision models: with or without the `vision_model.` level.
VISION_TOWER_LAYERS = r"model\.vision_tower\.(?:vision_model\.)?encoder\.layers"


class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_class = LlavaForConditionalGeneration
    processor_class = LlavaProcessor
    vision_layers_path = VISION_TOWER_LAYERS
    vision_attention = CLIP_ATTENTION
    image_handling = "one resized, centre-cropped view"

    def _vision_layers_used(self) -> int:
        return layers_reaching(self.model.config.vision_feature_layer, len(self.vision_layers()))


class LlavaNextAdapter(LlavaAdapter):
    """Any-resolution: a base view plus the tiles of the best grid pinpoint, stacked per sample."""

    family = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    processor_class = LlavaNextProcessor
    image_handling = "any-resolution: base view + grid tiles (image_grid_pinpoints)"
    projector_paths = ("model.multi_modal_projector", "model.image_newline")  # the row separator is learned too

    def _cap_tiles(self, max_tiles: int) -> None:
        # The model counts each image's tiles from its own config, so both must agree.
        side = self.model.config.vision_config.image_size
        kept = [p for p in self.model.config.image_grid_pinpoints if (p[0] // side) * (p[1] // side) <= max_tiles]
        self.model.config.image_grid_pinpoints = self.image_processor.image_grid_pinpoints = kept or [[side, side]]

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        return {"pixel_values": self.image_processor(images, return_tensors="pt")["pixel_values"][:, 0]}

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        self.model.model.vision_tower(pixels["pixel_values"])

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        side = self.model.config.vision_config.image_size
        tiles = [
            image_size_to_num_patches(size, self.model.config.image_grid_pinpoints, side)
            for size in batch["image_sizes"].tolist()
        ]
        return torch.repeat_interleave(torch.arange(len(tiles)), torch.tensor(tiles)).to(self.device)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision"
    model_class = LlavaOnevisionForConditionalGeneration
    processor_class = LlavaOnevisionProcessor
    image_handling = "any-resolution (SigLIP): base view + grid tiles, anyres_max_9 pooling"
