"""Per-token decoder cost in multiply-accumulates, and the saving skipping buys (spec roe.md §6.3)."""

from __future__ import annotations


def layer_macs(text_config, n_ctx: float) -> float:
    """C_layer ≈ D·(2·H·d_h + 2·H_kv·d_h) + 3·D·F + 2·n_ctx·H·d_h (gated MLP, n_ctx attended keys)."""
    d = text_config.hidden_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    return (
        d * (2 * heads * head_dim + 2 * kv_heads * head_dim)
        + 3 * d * text_config.intermediate_size
        + 2 * n_ctx * heads * head_dim
    )


def adapter_macs(d_model: int, rank: int) -> float:
    return 2 * d_model * rank


def theoretical_saving(text_config, rank: int, skip_rate_all_layers: float, n_ctx: float) -> dict[str, float]:
    """Decoder-FLOP saving ≈ (1 − C_adapter/C_layer)·skip_rate over all layers."""
    ratio = adapter_macs(text_config.hidden_size, rank) / layer_macs(text_config, n_ctx)
    return {"adapter_layer_cost_ratio": ratio, "n_ctx": n_ctx, "decoder_saving": (1.0 - ratio) * skip_rate_all_layers}
