"""RoE's own parameters (spec roe.md §2.2): per routable layer a router and a skip adapter, held in a
container outside the backbone so that no backbone parameter name changes (I1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .tokens import RoutingTokens

PREFIX = "roe"  # every RoE tensor is saved and grouped as roe.layers.{l}.… (and roe.tokens.…)
RouterInput = Literal["pooled", "tokens"]


@dataclass(frozen=True)
class RoEShape:
    """What fixes the RoE parameters of a model: width, adapter rank, the routable layers and what the routers
    read (pooled summaries, or routing tokens that add ``roe.tokens.*``)."""

    d_model: int
    rank: int
    n_layers: int
    routable: tuple[int, ...]
    router_input: RouterInput = "pooled"

    def to_json(self) -> dict:
        return asdict(self) | {"routable": list(self.routable)}


class Adapter(nn.Module):
    """A(x) = W_B·ReLU(W_A·x): bias-free, Xavier-uniform, no dropout."""

    def __init__(self, d_model: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, d_model, bias=False)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.xavier_uniform_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.relu(self.down(x)))


class RoutedLayer(nn.Module):
    """Router W ∈ R^{2×2D} (row 0 = execute, row 1 = skip; PyTorch's default init), the adapter, and a fixed
    logit offset ``prior`` [execute, skip] added to the router's output (zero unless route-train's
    ``router_prior`` sets it; a buffer, not trained)."""

    def __init__(self, d_model: int, rank: int) -> None:
        super().__init__()
        self.router = nn.Linear(2 * d_model, 2, bias=False)
        self.adapter = Adapter(d_model, rank)
        self.register_buffer("prior", torch.zeros(2))


class RoEModules(nn.Module):
    """The ``roe.`` container: ``layers`` maps a routable layer's index (as a string) to its modules;
    ``tokens`` holds the routing-token vectors when the routers read them."""

    def __init__(self, shape: RoEShape) -> None:
        super().__init__()
        self.shape = shape
        self.layers = nn.ModuleDict({str(l): RoutedLayer(shape.d_model, shape.rank) for l in shape.routable})
        self.tokens = RoutingTokens(shape.d_model) if shape.router_input == "tokens" else None

    def set_priors(self, skip_offsets: dict[int, float]) -> None:
        """Each routable layer's fixed skip-logit offset (execute stays 0); layers not named get 0."""
        for index, routed in self.layers.items():
            routed.prior.copy_(torch.tensor([0.0, float(skip_offsets.get(int(index), 0.0))]))

    def priors(self) -> dict[int, float]:
        return {int(index): float(routed.prior[1] - routed.prior[0]) for index, routed in self.layers.items()}

    def named_tensors(self) -> dict[str, Tensor]:
        """``roe.layers.{l}.router.weight``, ``….prior`` [2], ``….adapter.down.weight`` [r, D],
        ``….adapter.up.weight`` [D, r];
        ``roe.tokens.prefix`` and ``roe.tokens.turn`` [D] with routing tokens."""
        return {f"{PREFIX}.{name}": t.detach().contiguous() for name, t in self.state_dict().items()}

    def load_named_tensors(self, tensors: dict[str, Tensor]) -> None:
        prefix = f"{PREFIX}."
        state = {k[len(prefix) :]: v for k, v in tensors.items()}
        for index in self.layers:  # files written before the prior existed: no offset
            state.setdefault(f"layers.{index}.prior", torch.zeros(2))
        self.load_state_dict(state, strict=True)
