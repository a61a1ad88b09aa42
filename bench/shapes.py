"""InternVL2-2B's shapes, for the benchmarks that build a random-weight model of its size.

An InternViT-300M vision tower (24 layers, width 1024, 16 heads, MLP 4096, 448 px images, patch 14: 256 image
tokens per tile after the 2x2 merge) and a language model of InternLM2-chat-1.8B's size (24 layers, width 2048,
16 heads / 8 KV heads, MLP 8192, vocabulary 92,553; HF-native InternVL takes a Qwen2 decoder, so it is a Qwen2
with those sizes).
"""

from __future__ import annotations

from dataclasses import fields, replace

from dmole.stages.models.tiny import TinySize

INTERNVL2_2B = TinySize(
    lm_layers=24,
    lm_hidden=2048,
    lm_heads=16,
    lm_kv_heads=8,
    lm_intermediate=8192,
    vision_layers=24,
    vision_hidden=1024,
    vision_heads=16,
    vision_intermediate=4096,
    image_size=448,
    patch_size=14,
    vocab_size=92_553,
)
INTERNVL2_2B_IMAGE = 448  # the synthetic images' side for it


def language_model_only(size: TinySize, lm_layers: int) -> TinySize:
    """``size``'s language model, ``lm_layers`` deep, beside the tiny default's vision tower (one layer) and the
    tokenizer's own small vocabulary: its language-model width and head layout at a CPU's cost."""
    tiny = TinySize()
    vision = {f.name: getattr(tiny, f.name) for f in fields(TinySize) if not f.name.startswith("lm_")}
    return replace(size, **{**vision, "vision_layers": 1, "vocab_size": None}, lm_layers=lm_layers)
