"""RoE's three-stage training schedule (spec roe.md §5.2-§5.4): the random-skip bias b(ρ), the stage
boundaries, the temperature/bias annealing, and the callback that applies them to the standard loop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..training.loop import ParamGroup, warmup_cosine

STAGE_NAMES = ("adapter warm-up", "router warm-up", "joint")


def random_skip_bias(rho: float) -> float:
    """b with P(u₁ > u₀ + b) = ρ for u₀, u₁ ~ U[0,1): the difference has the triangular density 1 − |d|."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"skip ratio {rho} is outside [0, 1]")
    return 1.0 - math.sqrt(2.0 * rho) if rho <= 0.5 else math.sqrt(2.0 * (1.0 - rho)) - 1.0


@dataclass
class ScheduleState:
    """What the routed layers read during training: the current stage, τ and β. Training state shared
    by every forward of a step (a request's decisions live in a RoutingPlan instead)."""

    stage: int = 0
    tau: float = 10.0
    beta: float = 0.0
    step: int = 0  # the 0-based optimizer step (seeds the stage-0 draws)


@dataclass(frozen=True)
class StageSchedule:
    """Closed-form stage, τ and β from the 0-based optimizer step, so resumed runs agree exactly."""

    total: int
    rho: float
    stage1_start: float = 0.3
    stage2_start: float = 0.5
    anneal_every: float = 0.005
    tau0: float = 10.0
    tau_decay: float = 0.95
    beta_decay: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 <= self.stage1_start <= self.stage2_start <= 1.0:
            raise ValueError("stage fractions must satisfy 0 <= stage1_start <= stage2_start <= 1")

    @property
    def s1(self) -> int:
        return math.floor(self.stage1_start * self.total)

    @property
    def s2(self) -> int:
        return math.floor(self.stage2_start * self.total)

    @property
    def interval(self) -> int:
        return max(1, math.floor(self.anneal_every * self.total))

    @property
    def bias(self) -> float:
        return random_skip_bias(self.rho)

    def stage(self, step: int) -> int:
        return 0 if step < self.s1 else 1 if step < self.s2 else 2

    def anneal_count(self, step: int) -> int:
        """n(s) = ⌊(s − s₁)/K⌋ + 1 from stage 1 on; 0 before."""
        return (step - self.s1) // self.interval + 1 if step >= self.s1 else 0

    def tau(self, step: int) -> float:
        return self.tau0 * self.tau_decay ** self.anneal_count(step)

    def beta(self, step: int) -> float:
        """The stage-1 execute bias; in stage 0 the random-skip bias b(ρ) itself, in stage 2 zero."""
        stage = self.stage(step)
        if stage == 0:
            return self.bias
        return self.bias * self.beta_decay ** self.anneal_count(step) if stage == 1 else 0.0

    def state(self, step: int) -> ScheduleState:
        return ScheduleState(self.stage(step), self.tau(step), self.beta(step), step)


class RoEStageCallback:
    """Writes the step's stage, τ and β into the shared state and gates each named group's lr.

    The loop has already set every lr to base·warmup_cosine(step); groups not trained in the current
    stage get lr 0 and ``requires_grad`` off (so they neither move nor enter the clipping norm). At the
    first step and at each stage change it asserts that the optimizer's groups are ``groups`` (names,
    order, none empty, each with an explicit lr) and that each lr is base(name)·schedule(s)·gate.
    """

    def __init__(
        self,
        schedule: StageSchedule,
        state: ScheduleState,
        groups: Sequence[ParamGroup],
        trained_in: dict[str, set[int]],
        warmup_ratio: float,
    ) -> None:
        self.schedule, self.state, self.trained_in, self.warmup_ratio = schedule, state, trained_in, warmup_ratio
        self.groups = {g.name: g for g in groups}
        self._last_stage: int | None = None

    def gate(self, name: str, stage: int) -> float:
        return 1.0 if stage in self.trained_in[name] else 0.0

    def on_step_begin(self, step: int, total: int, optimizer: torch.optim.Optimizer) -> None:
        if total != self.schedule.total:
            raise RuntimeError(f"the schedule was built for {self.schedule.total} steps, the loop runs {total}")
        new = self.schedule.state(step)
        self.state.stage, self.state.tau, self.state.beta, self.state.step = new.stage, new.tau, new.beta, new.step
        changed = new.stage != self._last_stage
        if changed:
            self._check_groups(optimizer)
        factor = warmup_cosine(step, total, self.warmup_ratio)
        for group in optimizer.param_groups:
            gate = self.gate(group["name"], new.stage)
            group["lr"] *= gate
            for p in group["params"]:
                p.requires_grad_(gate > 0)
        if changed:
            self._check_lrs(optimizer, new.stage, factor)
            self._last_stage = new.stage

    def _check_groups(self, optimizer: torch.optim.Optimizer) -> None:
        names = [g["name"] for g in optimizer.param_groups]
        if names != list(self.groups) or any(not g["params"] for g in optimizer.param_groups):
            raise RuntimeError(f"parameter groups changed: planned {list(self.groups)}, optimizer has {names}")

    def _check_lrs(self, optimizer: torch.optim.Optimizer, stage: int, factor: float) -> None:
        for group in optimizer.param_groups:
            expected = self.groups[group["name"]].lr * factor * self.gate(group["name"], stage)
            if not math.isclose(group["lr"], expected, rel_tol=1e-9, abs_tol=1e-15):
                raise RuntimeError(f"lr of group {group['name']!r} is {group['lr']}, expected {expected}")

    def log_fields(self) -> dict[str, float]:
        return {"stage": float(self.state.stage), "tau": self.state.tau, "beta": self.state.beta}
