"""Gemma 3: SigLIP at one fixed resolution (optional pan-and-scan crops), Gemma 3 LM."""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from transformers import Gemma3ForConditionalGeneration, Gemma3Processor

from .base import CLIP_ATTENTION, FamilyAdapter
from .llava import VISION_TOWER_LAYERS


class Gemma3Adapter(FamilyAdapter):
    family = "gemma3"
    model_class = Gemma3ForConditionalGeneration
    processor_class = Gemma3Processor
    vision_layers_path = VISION_TOWER_LAYERS
    vision_attention = CLIP_ATTENTION
    image_handling = "one fixed-size view (pan-and-scan crops only when enabled)"

    def _cap_tiles(self, max_tiles: int) -> None:
        self.image_processor.pan_and_scan_max_num_crops = max_tiles

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        pixels = self.image_processor(images, do_pan_and_scan=False, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels}

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        """With pan-and-scan, each sample's crops follow its image; each view writes mm_tokens_per_image."""
        config = self.model.config
        views = (batch["input_ids"] == config.image_token_id).sum(dim=1) // config.mm_tokens_per_image
        return torch.repeat_interleave(torch.arange(len(views), device=views.device), views)
