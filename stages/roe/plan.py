"""Per-request and per-forward routing state, held in a context variable and never on modules (§4.3).

Outside any routing context the wrapped layers run their original forward: the same model object is
the dense model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .schedule import ScheduleState
from .segments import Segments
from .tokens import SlotStream

if TYPE_CHECKING:
    from .fixed import FixedRouting

BatchRule = Literal["gather", "or"]


@dataclass
class RoutingPlan:
    """One generate call's decisions. The prefill decides each routable layer once per row; every later
    forward reuses the decision. ``forced`` (layer -> [B] bool skip) overrides the routers (tests,
    forced-execute runs, benchmarks)."""

    batch_rule: BatchRule = "gather"
    forced: dict[int, Tensor] | None = None
    segments: Segments | None = None  # set from the prefill's input ids
    logits: dict[int, Tensor] = field(default_factory=dict)  # [B, 2] fp32 (exec, skip)
    decided: dict[int, Tensor] = field(default_factory=dict)  # [B] bool: the router wants to skip
    applied: dict[int, Tensor] = field(default_factory=dict)  # [B] bool: the layer was skipped
    rule_applied: dict[int, BatchRule] = field(default_factory=dict)
    fallback_reason: str | None = None
    stream: SlotStream | None = None  # routing tokens: the slots, moved layer by layer during the prefill
    # per-row state outside RoE (a continual model's per-sample experts) narrowed to a layer's executing rows
    rows: Callable[[Tensor], AbstractContextManager] | None = None

    @property
    def batch_rule_applied(self) -> BatchRule:
        return "or" if "or" in self.rule_applied.values() else self.batch_rule

    @classmethod
    def force_all(cls, skip: bool, layers, batch_size: int, **kwargs) -> RoutingPlan:
        return cls(forced={l: torch.full((batch_size,), skip) for l in layers}, **kwargs)


@dataclass
class TrainingRouting:
    """One training forward: soft decisions from the schedule state, the stage-0 draws (made once per
    forward, so recomputation sees the same values) and the per-layer skip probabilities it produced.

    ``keys`` name the batch's rows (their sample indices in the training set): each row's stage-0 draws come
    from a generator seeded by (seed, step, key, layer), so a sample draws the same skips whichever process
    or micro-batch it lands in. ``fixed`` (a baseline: static or random routing) replaces the stage-0 draws and
    the routers in every stage."""

    segments: Segments
    schedule: ScheduleState
    keys: list[int] = field(default_factory=list)  # needed in stage 0, which draws
    seed: int = 0
    noise: dict[int, Tensor] = field(default_factory=dict)  # [B, n, 2] U[0,1)
    p_skip: dict[int, Tensor] = field(default_factory=dict)  # [B, n] skip probability per turn
    stream: SlotStream | None = None  # routing tokens: the slots, moved layer by layer
    fixed: FixedRouting | None = None

    def draw(self, layer: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        if layer not in self.noise:
            if shape[0] != len(self.keys):
                raise RuntimeError(f"{shape[0]} rows for {len(self.keys)} sample keys")
            rows = [
                torch.rand(
                    shape[1:],
                    generator=torch.Generator().manual_seed(row_seed(self.seed, self.schedule.step, key, layer)),
                )
                for key in self.keys
            ]
            self.noise[layer] = torch.stack(rows).to(device)
        return self.noise[layer]

    def soft_skip(self) -> Tensor:
        """s_i: the mean over routable layers and valid turns of the skip probability, [B]."""
        valid = self.segments.valid_turns().float()
        per_layer = torch.stack([(p * valid).sum(1) / valid.sum(1).clamp(min=1.0) for p in self.p_skip.values()])
        return per_layer.mean(0)

    def straight_through_skip(self) -> Tensor:
        """s_i as the hinge sees it under ``skip_estimate: straight-through``: the share of routable layers and valid
        turns whose skip probability exceeds 1/2 (what inference's argmax skips), with the soft rate's gradient, [B]."""
        valid = self.segments.valid_turns().float()
        hard = torch.stack(
            [((p > 0.5).float() * valid).sum(1) / valid.sum(1).clamp(min=1.0) for p in self.p_skip.values()]
        ).mean(0)
        soft = self.soft_skip()
        return hard.to(soft.device) + soft - soft.detach()

    def hard_skip(self) -> float:
        valid = self.segments.valid_turns()
        return float(torch.stack([p.detach()[valid] > 0.5 for p in self.p_skip.values()]).float().mean())


def row_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python runs (no salted hash())."""
    digest = hashlib.blake2b("-".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_ACTIVE: ContextVar[RoutingPlan | TrainingRouting | None] = ContextVar("roe_routing", default=None)


def active() -> RoutingPlan | TrainingRouting | None:
    return _ACTIVE.get()


@contextmanager
def routing(state: RoutingPlan | TrainingRouting) -> Iterator[RoutingPlan | TrainingRouting]:
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)
