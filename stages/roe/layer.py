"""The routed decoder layer: execute, skip, or (training) a soft mixture of both (spec roe.md §4).

A routable layer keeps its module and its parameter names; only its ``forward`` attribute is replaced by
``RoutedForward``, which reads the active routing state from the context variable. The execute path is
always the layer's original forward with the arguments it received (I2). When the routers read routing
tokens, every layer (always-executed ones through ``StreamedForward``) also moves the token slots.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from ..errors import UserError
from .modules import RoutedLayer
from .plan import RoutingPlan, TrainingRouting, active
from .segments import Segments
from .tokens import RoutingTokens, SlotStream


class RoutingError(UserError):
    """A request RoE cannot route (e.g. a chunked prefill)."""


class _Ungatherable(Exception):
    pass


def pooled_summaries(normed: Tensor, segments: Segments) -> Tensor:
    """[B, 1 + n, D] fp32: the masked means of Norm_l(H) over the prefix and each turn's question (§3.2)."""
    return torch.bmm(segments.pooling().to(normed.device), normed.float())


def router_logits(routed: RoutedLayer, summaries: Tensor) -> Tensor:
    """z = W·[g_0 ; g_t] + prior per turn, [B, n, 2] in fp32, from the prefix's and each turn's summary
    [B, 1 + n, D] (pooled, or the normed routing-token slots): the one router input of training and inference
    (§3.4). The prior is the layer's fixed offset (zero unless route-train's ``router_prior`` set it)."""
    summaries = summaries.float()
    n = summaries.shape[1] - 1
    features = torch.cat([summaries[:, :1].expand(-1, n, -1), summaries[:, 1:]], dim=-1)
    with torch.autocast(summaries.device.type, enabled=False):
        return routed.router(features.to(routed.router.weight.dtype)).float() + routed.prior.float()


def _batch_axis(name: str, value: Tensor) -> int | None:
    """The batch axis of a layer argument we know, None for arguments shared by all rows."""
    if name in ("hidden_states", "attention_mask"):
        return 0
    if name == "position_ids":
        return 0 if value.ndim == 2 else 1  # multimodal RoPE: [3, B, T]
    if name == "position_embeddings":
        return 0 if value.ndim == 3 else 1
    if name == "cache_position":
        return None
    raise _Ungatherable(f"layer argument {name!r} has no registered batch axis")


def _take(name: str, value, rows: Tensor, batch: int):
    if isinstance(value, tuple):
        return tuple(_take(name, v, rows, batch) for v in value)
    if not isinstance(value, Tensor):
        if name == "past_key_values" and value is not None and type(value) is not DynamicCache:
            raise _Ungatherable(f"{type(value).__name__} is not a dynamic cache")
        return value
    axis = _batch_axis(name, value)
    if axis is None or value.shape[axis] == 1 < batch:  # shared or broadcast over the batch
        return value
    return value.index_select(axis, rows)


@dataclass(frozen=True)
class TokenSource:
    """Where a forward's routing-token stream comes from: the learned vectors and RoPE's scale at position 0."""

    tokens: RoutingTokens
    rope_scale: float

    def stream(self, state: RoutingPlan | TrainingRouting, layer: int, hidden: Tensor) -> SlotStream | None:
        """The stream due at ``layer`` in this forward, started at layer 0 of a training forward or a prefill;
        None in decode steps (the slots have done their work) and for an inputs_embeds-only call."""
        if (
            layer == 0
            and state.stream is None
            and state.segments is not None
            and tuple(state.segments.turn.shape) == tuple(hidden.shape[:2])
        ):
            state.stream = SlotStream.start(self.tokens, state.segments.pooling(), self.rope_scale)
        stream = state.stream
        return stream if stream is not None and stream.due(layer) else None


def _run(original, hidden: Tensor, kwargs: dict) -> Tensor:
    out = original(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


class StreamedForward:
    """Installed as ``layer.forward`` on an always-executed layer when the routers read routing tokens: the
    layer runs as before and moves the slots through itself."""

    def __init__(self, index: int, source: TokenSource, original) -> None:
        self.index, self.source, self.original = index, source, original

    def __call__(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        state = active()
        stream = self.source.stream(state, self.index, hidden_states) if state is not None and not args else None
        if stream is None:
            return self.original(hidden_states, *args, **kwargs)
        if isinstance(state, TrainingRouting):  # no cache to keep free of slots: one joined pass
            return stream.take(_run(self.original, *stream.joined(hidden_states, kwargs)))
        out = self.original(hidden_states, **kwargs)
        stream.advance(_run(self.original, *stream.joined(hidden_states, kwargs))[:, : stream.width])
        return out


class RoutedForward:
    """Callable installed as ``layer.forward`` on routable layer ``index``; ``source`` is set when the routers
    read routing tokens instead of pooled summaries."""

    def __init__(
        self, index: int, routed: RoutedLayer, norm: nn.Module, original, source: TokenSource | None = None
    ) -> None:
        self.index, self.routed, self.norm, self.original, self.source = index, routed, norm, original, source

    def __call__(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        state = active()
        if state is None:
            return self.original(hidden_states, *args, **kwargs)
        if args:  # transformers passes everything but the states by keyword; keep the gather rule exact
            raise RoutingError(f"layer {self.index}: positional layer arguments are not supported by RoE")
        stream = self.source.stream(state, self.index, hidden_states) if self.source is not None else None
        if isinstance(state, TrainingRouting):
            return self._soft(state, hidden_states, kwargs, stream)
        return self._hard(state, hidden_states, kwargs, stream)

    def _execute(self, hidden: Tensor, kwargs: dict) -> Tensor:
        return _run(self.original, hidden, kwargs)

    def _skip(self, hidden: Tensor, normed: Tensor | None = None) -> Tensor:
        """skip_l(H) = H + A_l(Norm_l(H)), with the layer's own norm module."""
        normed = self.norm(hidden) if normed is None else normed
        adapter = self.routed.adapter
        return hidden + adapter(normed.to(adapter.up.weight.dtype)).to(hidden.dtype)

    # ---- training: soft decisions ------------------------------------------------------
    def _soft(self, state: TrainingRouting, hidden: Tensor, kwargs: dict, stream: SlotStream | None) -> Tensor:
        """With routing tokens the slots ride in front of the tokens through one pass; each slot row is mixed
        with its own segment's probability (slot 0 with the prefix's)."""
        segments, schedule = state.segments, state.schedule
        sequence, arguments = stream.joined(hidden, kwargs) if stream is not None else (hidden, kwargs)
        normed = self.norm(sequence)
        if state.fixed is not None:  # a baseline's decisions, per example; the router is not consulted
            skip = state.fixed.skips(state.keys, self.index, schedule.step).to(hidden.device)
            logits = torch.stack([torch.zeros_like(skip, dtype=torch.float), 2000.0 * skip - 1000.0], dim=-1)
            logits = logits[:, None].expand(-1, segments.n_turns, -1)
        elif schedule.stage == 0:  # random skipping at rate ρ; the router is not consulted
            noise = state.draw(self.index, (hidden.shape[0], segments.n_turns, 2), hidden.device)
            logits = 1000.0 * (noise + torch.tensor([schedule.beta, 0.0], device=hidden.device))
        else:
            summaries = normed[:, : stream.width] if stream is not None else pooled_summaries(normed, segments)
            z = router_logits(self.routed, summaries)
            bias = torch.tensor([schedule.beta if schedule.stage == 1 else 0.0, 0.0], device=z.device)
            logits = (z + bias) / schedule.tau
        valid = segments.valid_turns().to(logits.device)
        prefix = (logits * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        p_skip = torch.softmax(torch.cat([prefix[:, None], logits], dim=1), dim=-1)[..., 1]
        p_skip = p_skip * torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # invalid turns execute
        state.p_skip[self.index] = p_skip[:, 1:]
        turn = segments.turn.to(hidden.device)
        per_token = p_skip.gather(1, turn.clamp(min=0)) * (turn >= 0)  # padding executes
        if stream is not None:
            per_token = torch.cat([p_skip, per_token], dim=1)
        dense = self._execute(sequence, arguments)
        mixed = dense + per_token[..., None].to(hidden.dtype) * (self._skip(sequence, normed) - dense)
        return stream.take(mixed) if stream is not None else mixed

    # ---- inference: hard decisions -----------------------------------------------------
    def _hard(self, plan: RoutingPlan, hidden: Tensor, kwargs: dict, stream: SlotStream | None) -> Tensor:
        normed = self._decide(plan, hidden, kwargs, stream) if self.index not in plan.applied else None
        skip = plan.applied[self.index].to(hidden.device)
        if stream is not None:
            self._move_slots(stream, skip, hidden, kwargs)
        if not skip.any():
            return self._execute(hidden, kwargs)
        if skip.all():  # the block never runs and writes no KV
            return self._skip(hidden, normed)
        batch = hidden.shape[0]
        rows_exec, rows_skip = (~skip).nonzero().squeeze(1), skip.nonzero().squeeze(1)
        gathered = {name: _take(name, value, rows_exec, batch) for name, value in kwargs.items()}
        out = torch.empty_like(hidden)
        with plan.rows(rows_exec) if plan.rows is not None else nullcontext():
            out[rows_exec] = self._execute(hidden[rows_exec], gathered)
        out[rows_skip] = self._skip(hidden[rows_skip], None if normed is None else normed[rows_skip])
        return out

    def _move_slots(self, stream: SlotStream, skip: Tensor, hidden: Tensor, kwargs: dict) -> None:
        """Each row's slots follow the row's decision: the adapter when it skips, the block when it executes."""
        skipped = self._skip(stream.states)
        if skip.all():
            stream.advance(skipped)
            return
        executed = self._execute(*stream.joined(hidden, kwargs))[:, : stream.width]
        stream.advance(torch.where(skip[:, None, None], skipped, executed))

    def _decide(self, plan: RoutingPlan, hidden: Tensor, kwargs: dict, stream: SlotStream | None = None) -> Tensor:
        """At prefill: the router's choice per row, from the last turn (the question being answered; with
        routing tokens, the last slot), then the batch rule; returns Norm_l(H)."""
        segments = plan.segments
        if segments is None or tuple(segments.turn.shape) != tuple(hidden.shape[:2]):
            raise RoutingError(
                "RoE decides at a single prefill of the whole prompt; chunked prefill and "
                "inputs_embeds-only calls are refused"
            )
        normed = self.norm(hidden)
        summaries = self.norm(stream.states) if stream is not None else pooled_summaries(normed, segments)
        logits = router_logits(self.routed, summaries)[:, -1]
        decided = logits[:, 1] > logits[:, 0]  # a tie executes
        if plan.forced is not None:
            decided = plan.forced.get(self.index, torch.zeros_like(decided)).to(decided.device)
        rule = plan.batch_rule
        if rule == "gather" and decided.any() and not decided.all():
            try:
                rows = (~decided).nonzero().squeeze(1)
                for name, value in kwargs.items():
                    _take(name, value, rows, hidden.shape[0])
            except _Ungatherable as reason:
                rule, plan.fallback_reason = "or", str(reason)
        plan.logits[self.index], plan.decided[self.index] = logits.detach(), decided
        plan.applied[self.index] = decided if rule == "gather" or decided.all() else torch.zeros_like(decided)
        plan.rule_applied[self.index] = rule
        return normed
