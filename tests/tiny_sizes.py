"""The tiny random model most RoE, resume and launch tests build: a 64-wide language model of a few layers (two
heads, one KV head) on a one-layer vision tower over 16-pixel images."""

from __future__ import annotations

from dmole.stages.models.tiny import TinySize


def small_lm(lm_layers: int = 4) -> TinySize:
    return TinySize(
        lm_layers=lm_layers,
        lm_hidden=64,
        lm_heads=2,
        lm_kv_heads=1,
        lm_intermediate=128,
        vision_layers=1,
        vision_hidden=32,
        vision_heads=1,
        vision_intermediate=64,
        image_size=16,
        patch_size=8,
    )
