"""RoE's objective (spec roe.md §5.1): per-example cross-entropy plus the difficulty-weighted sparsity hinge."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.base import IGNORE


def per_example_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """CE_i: the mean next-token cross-entropy over example i's supervised tokens, [B] fp32."""
    targets = labels[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    supervised = (targets != IGNORE).float()
    return (tokens * supervised).sum(1) / supervised.sum(1).clamp(min=1.0)


def difficulty_weight(ce: Tensor, gamma: float) -> Tensor:
    """sg(exp(−γ·CE_i)): easy (low-CE) examples are pushed hardest; no gradient flows through it."""
    return torch.exp(-gamma * ce.detach())


def roe_objective(
    ce: Tensor, soft_skip: Tensor, *, rho: float, lam: float, gamma: float, scope: str = "example"
) -> dict[str, Tensor]:
    """L = mean_i [CE_i + λ·sg(e^{−γ·CE_i})·max(0, ρ − s_i)], averaged over examples, not tokens (scope
    ``example``, the spec's: every example must skip ρ). Scope ``batch`` puts the hinge on the batch's mean skip,
    λ·mean_i sg(e^{−γ·CE_i})·max(0, ρ − mean_i s_i): the batch must skip ρ on average, and CE alone decides which
    examples skip more and which less."""
    weight = difficulty_weight(ce, gamma)
    if scope == "batch":
        reg = lam * weight.mean() * torch.relu(rho - soft_skip.mean())
        return {"loss": ce.mean() + reg, "ce": ce.mean().detach(), "reg": reg.detach()}
    reg = lam * weight * torch.relu(rho - soft_skip)
    return {"loss": (ce + reg).mean(), "ce": ce.mean().detach(), "reg": reg.mean().detach()}
