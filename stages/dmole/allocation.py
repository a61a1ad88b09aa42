"""The allocation rule and the inter-modal curriculum (spec/dmole.md §6).

Scores come in as records with ``module``, ``tower``, ``score``, ``d_in`` and ``d_out``. Rankings are
a total order (score descending, full name ascending), so allocation needs no seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import UserError

VISION_FLOOR = 0.25
# The paper's allocator and its ablations (Table 4): experts in one tower only (v1, v2), one ranking pooled
# over both towers with no inter-modal split (v3), and no dynamic allocator (v4: the same evenly spread
# modules for every task, whatever the scores).
RULES = ("dmole", "vision-only", "language-only", "pooled", "uniform")


class AllocationError(UserError):
    pass


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class ScoredModule:
    module: str
    tower: str
    score: float
    d_in: int
    d_out: int
    overhead: int = 0  # what its expert costs besides the LoRA matrices (a DoRA's magnitudes: d_out)

    def cost(self, rank: int) -> int:
        return rank * (self.d_in + self.d_out) + self.overhead


@dataclass
class Allocation:
    budget_mode: str
    budget: int  # modules (fraction mode) or parameters (parameter mode)
    score_vision: float
    score_language: float
    pi_vision: float
    n_vision: int
    n_language: int
    selected: list[str]
    expert_parameters: int
    cumulative: dict[str, list[int]] = field(default_factory=dict)


def ranking(modules: list[ScoredModule]) -> list[ScoredModule]:
    return sorted(modules, key=lambda m: (-m.score, m.module))


def vision_share(modules: list[ScoredModule]) -> tuple[float, float, float]:
    s_v = sum(m.score for m in modules if m.tower == "vision")
    s_l = sum(m.score for m in modules if m.tower == "language")
    if s_v + s_l <= 0:
        raise AllocationError("every zero-cost score is 0: no gradient reached the candidate modules")
    return s_v, s_l, s_v / (s_v + s_l)


def split_modules(budget: int, pi_vision: float, n_vision_max: int, n_language_max: int) -> tuple[int, int]:
    """n_V = max(floor(B/4), round(B * pi_V)), n_L = B - n_V, then move any excess over a tower's size."""
    n_v = max(math.floor(VISION_FLOOR * budget), round_half_up(budget * pi_vision))
    n_l = budget - n_v
    if n_v > n_vision_max:
        n_l, n_v = n_l + n_v - n_vision_max, n_vision_max
    if n_l > n_language_max:
        n_v, n_l = min(n_vision_max, n_v + n_l - n_language_max), n_language_max
    return n_v, n_l


def _prefix_within(ranked: list[ScoredModule], budget: int, rank: int) -> int:
    """Length of the longest top-n prefix whose parameter cost fits in ``budget``."""
    spent = 0
    for n, module in enumerate(ranked):
        if spent + module.cost(rank) > budget:
            return n
        spent += module.cost(rank)
    return len(ranked)


def model_order(modules: list[ScoredModule]) -> list[ScoredModule]:
    """Vision tower first, then by name with layer numbers compared as numbers: independent of the scores."""

    def key(m: ScoredModule):
        return m.tower != "vision", [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", m.module)]

    return sorted(modules, key=key)


def evenly_spread(modules: list[ScoredModule], n: int) -> list[ScoredModule]:
    """``n`` modules at evenly spaced positions of the model's order (towers, layers, kinds)."""
    ordered = model_order(modules)
    return [ordered[math.floor((i + 0.5) * len(ordered) / n)] for i in range(n)] if n else []


def _by_rule(rule: str, modules: list[ScoredModule], budget: int, mode: str, rank: int) -> list[ScoredModule]:
    """The ablations' choices: every module from one ranking (a tower's, or both pooled), or evenly spread."""
    if rule == "uniform":  # always by parameters (a module fraction is turned into D-MoLE's count)
        n = max(
            (k for k in range(len(modules) + 1) if sum(m.cost(rank) for m in evenly_spread(modules, k)) <= budget),
            default=0,
        )
        return evenly_spread(modules, n)
    towers = {"vision-only": ("vision",), "language-only": ("language",), "pooled": ("vision", "language")}[rule]
    ranked = ranking([m for m in modules if m.tower in towers])
    return ranked[:budget] if mode == "fraction" else ranked[: _prefix_within(ranked, budget, rank)]


def allocate(
    modules: list[ScoredModule],
    *,
    fraction: float | None = None,
    parameters: int | None = None,
    rank: int = 8,
    previous: dict[str, list[int]] | None = None,
    task_id: int = 1,
    rule: str = "dmole",
) -> Allocation:
    """Choose task ``task_id``'s expert modules under a module fraction or a parameter budget; ``rule`` picks
    the paper's allocator (``dmole``) or one of its ablations (RULES)."""
    if (fraction is None) == (parameters is None):
        raise AllocationError("give exactly one budget: a fraction of the modules or a parameter count")
    if rule not in RULES:
        raise AllocationError(f"unknown allocation rule {rule!r}; choose one of {', '.join(RULES)}")
    vision = ranking([m for m in modules if m.tower == "vision"])
    language = ranking([m for m in modules if m.tower == "language"])
    s_v, s_l, pi_v = vision_share(modules)
    if rule == "uniform" and fraction is not None:
        # at D-MoLE's parameter count for this task and budget, so the two compare at equal size
        parameters, fraction = allocate(modules, fraction=fraction, rank=rank).expert_parameters, None
    if rule != "dmole":
        mode = "fraction" if fraction is not None else "parameters"
        budget = round_half_up(fraction * len(modules)) if fraction is not None else parameters
        if budget < 1 or (fraction is not None and not 0 < fraction <= 1):
            raise AllocationError(f"--budget {fraction or parameters} selects no module")
        chosen = _by_rule(rule, modules, budget, mode, rank)
        if not chosen:
            raise AllocationError(f"--budget {parameters} parameters cannot hold a single rank-{rank} expert")
        return _result(modules, chosen, previous, task_id, mode, budget, s_v, s_l, pi_v, rank)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise AllocationError(f"--budget {fraction} is out of range: a fraction must be in (0, 1]")
        budget = round_half_up(fraction * len(modules))
        if budget < 1:
            raise AllocationError(f"--budget {fraction} selects no module out of {len(modules)}")
        n_v, n_l = split_modules(budget, pi_v, len(vision), len(language))
        mode = "fraction"
    else:
        if parameters <= 0:
            raise AllocationError(f"--budget {parameters} is out of range: a parameter budget must be positive")
        budget = parameters
        p_v, p_l = split_modules(
            parameters, pi_v, sum(m.cost(rank) for m in vision), sum(m.cost(rank) for m in language)
        )
        n_v, n_l = _prefix_within(vision, p_v, rank), _prefix_within(language, p_l, rank)
        if n_v + n_l == 0:
            raise AllocationError(f"--budget {parameters} parameters cannot hold a single rank-{rank} expert")
        mode = "parameters"
    return _result(modules, vision[:n_v] + language[:n_l], previous, task_id, mode, budget, s_v, s_l, pi_v, rank)


def _result(modules, chosen, previous, task_id, mode, budget, s_v, s_l, pi_v, rank) -> Allocation:
    cumulative = {m.module: list((previous or {}).get(m.module, [])) for m in modules}
    for module in chosen:
        cumulative[module.module].append(task_id)
    return Allocation(
        budget_mode=mode,
        budget=budget,
        score_vision=s_v,
        score_language=s_l,
        pi_vision=pi_v,
        n_vision=sum(m.tower == "vision" for m in chosen),
        n_language=sum(m.tower == "language" for m in chosen),
        selected=sorted(m.module for m in chosen),
        expert_parameters=sum(m.cost(rank) for m in chosen),
        cumulative=cumulative,
    )
