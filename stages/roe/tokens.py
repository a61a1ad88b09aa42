"""Routing tokens (spec roe.md §3.3), the reference's router input, offered beside pooling: learned slots that
travel with the sequence through every LM layer. Slot 0 sees itself and the prefix, slot t itself and turn t's
question (overriding causality); no real token ever sees a slot.

Because no real token attends to a slot, the slots are kept as a side stream rather than inside the sequence:
at each layer the block runs once more on [slots ; tokens] with the edited mask and no cache, and the slot rows
of that pass are the slots' next states (in training, its token rows are the layer's output as well). The cache
never holds a slot, and the real tokens' positions, mask and outputs are the base model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UserError


class TokenStreamError(UserError):
    """A layer argument the routing-token stream does not know how to extend."""


class RoutingTokens(nn.Module):
    """``roe.tokens.prefix`` and ``roe.tokens.turn`` ∈ R^D, initialised N(0, 0.1²)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.randn(d_model) * 0.1)
        self.turn = nn.Parameter(torch.randn(d_model) * 0.1)

    def slots(self, batch: int, n_turns: int) -> Tensor:
        """[B, 1 + n, D]: the prefix vector, then the shared turn vector once per turn."""
        return torch.cat([self.prefix[None], self.turn[None].expand(n_turns, -1)])[None].expand(batch, -1, -1)


def _real_mask(given: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """The layer's own [B, 1, T, T] mask as booleans (True = attend); None means causal without padding."""
    if given is None:
        return torch.ones(length, length, dtype=torch.bool, device=device).tril().expand(batch, 1, -1, -1)
    visible = given if given.dtype == torch.bool else given == 0  # an additive mask: 0 visible, very negative not
    return visible.expand(batch, 1, length, length)


@dataclass
class SlotStream:
    """The slots' hidden states between layers of one forward; ``next_layer`` is the layer due to move them
    (the number of layers once the prefill has passed them all, so decode steps leave them alone)."""

    states: Tensor  # [B, m, D]
    visible: Tensor  # [B, m, T] bool: which real tokens each slot attends to
    rope_scale: float  # cos at position 0 (RoPE's attention scaling); sin is 0
    next_layer: int = 0

    @classmethod
    def start(cls, tokens: RoutingTokens, pooling: Tensor, rope_scale: float) -> SlotStream:
        """``pooling`` is Segments.pooling() [B, 1 + n, T]: a slot sees exactly the tokens its summary would pool."""
        batch, m, _ = pooling.shape
        return cls(tokens.slots(batch, m - 1), pooling > 0, rope_scale)

    @property
    def width(self) -> int:
        return self.states.shape[1]

    def due(self, layer: int) -> bool:
        return self.next_layer == layer

    def joined(self, hidden: Tensor, kwargs: dict) -> tuple[Tensor, dict]:
        """[slots ; tokens] and the layer arguments for it: the edited mask, position 0 for every slot, no cache."""
        batch, length = hidden.shape[:2]
        m, device = self.width, hidden.device
        given = kwargs.get("attention_mask")
        top = torch.cat(
            [torch.eye(m, dtype=torch.bool, device=device).expand(batch, 1, m, m), self.visible.to(device)[:, None]],
            dim=-1,
        )
        bottom = torch.cat(
            [
                torch.zeros(batch, 1, length, m, dtype=torch.bool, device=device),
                _real_mask(given, batch, length, device),
            ],
            dim=-1,
        )
        mask = torch.cat([top, bottom], dim=2)
        if given is not None and given.dtype != torch.bool:
            blocked = torch.finfo(given.dtype).min
            mask = torch.zeros(mask.shape, dtype=given.dtype, device=device).masked_fill(~mask, blocked)
        joined = {}
        for name, value in kwargs.items():
            if name == "attention_mask":
                value = mask
            elif name == "position_embeddings":
                cos, sin = value
                value = (
                    torch.cat(
                        [torch.full_like(cos[..., :1, :].expand(*cos.shape[:-2], m, -1), self.rope_scale), cos], dim=-2
                    ),
                    torch.cat([torch.zeros_like(sin[..., :1, :].expand(*sin.shape[:-2], m, -1)), sin], dim=-2),
                )
            elif name in ("position_ids", "cache_position") and isinstance(value, Tensor):
                value = torch.cat([value.new_zeros(*value.shape[:-1], m), value], dim=-1)
            elif name in ("cache", "past_key_values", "past_key_value"):
                value = None
            elif name == "use_cache":
                value = False
            elif isinstance(value, Tensor):
                raise TokenStreamError(
                    f"layer argument {name!r} is unknown to the routing-token stream; use router_input: pooled"
                )
            joined[name] = value
        return torch.cat([self.states.to(hidden.dtype), hidden], dim=1), joined

    def take(self, out: Tensor) -> Tensor:
        """Keep the slot rows of a joined layer output as the next states; return the token rows."""
        self.advance(out[:, : self.width])
        return out[:, self.width :]

    def advance(self, states: Tensor) -> None:
        self.states, self.next_layer = states, self.next_layer + 1
