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


def roe_objective(ce: Tensor, soft_skip: Tensor, *, rho: float, lam: float, gamma: float) -> dict[str, Tensor]:
    """L = mean_i [CE_i + λ·sg(e^{−γ·CE_i})·max(0, ρ − s_i)], averaged over examples, not tokens."""
    reg = lam * difficulty_weight(ce, gamma) * torch.relu(rho - soft_skip)
    return {"loss": (ce + reg).mean(), "ce": ce.mean().detach(), "reg": reg.mean().detach()}
