"""SmolVLM and Idefics3: SigLIP-style encoder on sub-images plus a global view, pixel-shuffle connector."""

from __future__ import annotations

from math import isqrt

import torch
from PIL import Image
from torch import Tensor
from transformers import (
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    SmolVLMForConditionalGeneration,
    SmolVLMProcessor,
)

from .base import CLIP_ATTENTION, FamilyAdapter


class SmolVLMAdapter(FamilyAdapter):
    family = "smolvlm"
    model_class = SmolVLMForConditionalGeneration
    processor_class = SmolVLMProcessor
    vision_layers_path = r"model\.vision_model\.encoder\.layers"
    vision_attention = CLIP_ATTENTION
    lm_path = "model.text_model"
    projector_paths = ("model.connector",)
    image_handling = "image splitting into max_image_size sub-images + a global view"

    def _cap_tiles(self, max_tiles: int) -> None:
        per_side = max(1, isqrt(max_tiles))
        self.image_processor.size = {"longest_edge": per_side * self.image_processor.max_image_size["longest_edge"]}

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        return self.image_processor(images, do_image_splitting=False, return_tensors="pt")

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor:
        """Sub-images of all samples are stacked; the all-zero padding images are dropped, as the model does."""
        pixels = batch["pixel_values"]
        real = (pixels != 0).flatten(2).any(dim=-1).sum(dim=1)
        return torch.repeat_interleave(torch.arange(len(real), device=real.device), real)


class Idefics3Adapter(SmolVLMAdapter):
    family = "idefics3"
    model_class = Idefics3ForConditionalGeneration
    processor_class = Idefics3Processor
