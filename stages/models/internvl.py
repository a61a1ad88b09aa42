"""InternVL (transformers-native): InternViT, pixel-shuffle projector, Qwen2 LM."""

from __future__ import annotations

from PIL import Image
from torch import Tensor
from transformers import GotOcr2ImageProcessorPil, InternVLForConditionalGeneration

from .base import FamilyAdapter, layers_reaching


class InternVLAdapter(FamilyAdapter):
    family = "internvl"
    model_type = "internvl"
    model_class = InternVLForConditionalGeneration
    image_processor_class = GotOcr2ImageProcessorPil
    vision_layers_path = r"model\.vision_tower\.encoder\.layer"
    vision_attention = {"attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
                        "attention.projection_layer": "o"}
    image_markup = "<IMG_CONTEXT>"

    def _pixels(self, images: list[Image.Image]) -> tuple[dict[str, Tensor], list[int]]:
        # One thumbnail per image: tiling (crop_to_patches) stays off.
        out = self.image_processor([im.convert("RGB") for im in images], crop_to_patches=False, return_tensors="pt")
        pixel_values = out["pixel_values"]
        patch_h, patch_w = self.model.config.vision_config.patch_size
        patches = (pixel_values.shape[-2] // patch_h) * (pixel_values.shape[-1] // patch_w)
        n = round(patches * self.model.config.downsample_ratio**2)
        return {"pixel_values": pixel_values}, [n] * len(images)

    def _image_span(self, n_features: int) -> str:
        context = self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id)
        return "<img>" + context * n_features + "</img>"

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        self.model.model.vision_tower(pixel_values=pixels["pixel_values"])

    def _thumbnail_size(self) -> int:
        return self.model.config.vision_config.image_size[0]

    def _vision_layers_used(self) -> int:
        return layers_reaching(self.model.config.vision_feature_layer, len(self.vision_layers()))
