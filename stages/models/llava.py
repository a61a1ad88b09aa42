"""LLaVA: CLIP vision tower, MLP projector, Llama LM."""

from __future__ import annotations

from PIL import Image
from torch import Tensor
from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration

from .base import FamilyAdapter, layers_reaching


class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_type = "llava"
    model_class = LlavaForConditionalGeneration
    image_processor_class = CLIPImageProcessorPil
    # transformers 5.x CLIPVisionModel has no `vision_model.` level; older layouts match too.
    vision_layers_path = r"model\.vision_tower\.(?:vision_model\.)?encoder\.layers"
    vision_attention = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
                        "self_attn.out_proj": "o"}
    image_markup = "<image>"

    def _pixels(self, images: list[Image.Image]) -> tuple[dict[str, Tensor], list[int]]:
        pixel_values = self.image_processor([im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        patch = self.model.config.vision_config.patch_size
        full = self.model.config.vision_feature_select_strategy == "full"  # keeps CLS
        n = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch) + full
        return {"pixel_values": pixel_values}, [n] * len(images)

    def _image_span(self, n_features: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id) * n_features

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        self.model.model.vision_tower(pixels["pixel_values"])

    def _thumbnail_size(self) -> int:
        return self.model.config.vision_config.image_size

    def _vision_layers_used(self) -> int:
        return layers_reaching(self.model.config.vision_feature_layer, len(self.vision_layers()))
