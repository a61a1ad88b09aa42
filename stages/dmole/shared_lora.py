"""One LoRA over a group of projections that read the same input: a shared A, one B split across the members.

A ``qkv`` candidate (`dmole.stages.models.base.Candidate`) is a layer's q, k and v projections standing for the fused
projection they were split from. A rank-r LoRA on that fused projection is

    [y_q; y_k; y_v] = W x + (alpha / r) * B A dropout(x),   A: r x d_in,  B: (d_q + d_k + d_v) x r

so on the split model it is one A shared by the three members, each member's rows of B as its own ``lora_B``,
and one dropout mask. PEFT builds a LoRA per target module; `tie` makes the members' ``lora_A`` the same module
and gives them one `SharedDropout`, so PEFT's own forward, per-sample masking, freezing and saving work unchanged:

- the trainable parameters are r * (d_in + d_q + d_k + d_v), the fused LoRA's (``named_parameters`` lists a
  shared A once);
- PEFT saves a copy of A under each member (it clones aliased tensors for safetensors), so the folder is a standard
  LoRA on q, k and v that ``PeftModel.from_pretrained`` loads and runs exactly; only training it there would untie
  A and draw a dropout mask per member. `tie` on load checks the copies are one tensor and shares them again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class SharedDropout(nn.Module):
    """Dropout whose mask is drawn once for ``uses`` consecutive calls on inputs of one shape: the group's members
    are called in turn on the same activations, and a fused LoRA drops out its one input once."""

    def __init__(self, p: float, uses: int):
        super().__init__()
        self.p, self.uses = p, uses
        self._mask: torch.Tensor | None = None
        self._left = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self._left == 0 or self._mask is None or self._mask.shape != x.shape:
            self._mask, self._left = nn.functional.dropout(torch.ones_like(x), self.p, training=True), self.uses
        self._left -= 1
        mask = self._mask
        if self._left == 0:
            self._mask = None  # not kept past the group's last member
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, uses={self.uses}"


def _lora_layer(model: nn.Module, name: str) -> nn.Module:
    """The PEFT LoRA layer that wraps the base module ``name`` (a full name in the base model)."""
    for prefix in ("base_model.model.", ""):
        try:
            return model.get_submodule(prefix + name)
        except AttributeError:
            continue
    raise KeyError(f"no module {name} in the model")


def tie(model: nn.Module, adapter: str, groups: Mapping[str, Sequence[str]], *, loaded: bool = False) -> None:
    """Share adapter ``adapter``'s A and dropout across each group's members (PEFT LoRA layers of ``model``). A
    ``loaded`` adapter carries a copy of A per member, which must be one tensor, bit for bit."""
    for group, members in groups.items():
        layers = [_lora_layer(model, member) for member in members]
        first = layers[0].lora_A[adapter]
        for member, layer in zip(members[1:], layers[1:]):
            copy = layer.lora_A[adapter]
            if copy.weight.shape != first.weight.shape:
                raise ValueError(
                    f"{group}: {member}'s A is {tuple(copy.weight.shape)}, not "
                    f"{tuple(first.weight.shape)}: its members do not share one input"
                )
            if loaded and not torch.equal(copy.weight, first.weight):
                raise ValueError(
                    f"{group}: the saved expert {adapter} has a different A on {member} than on "
                    f"{members[0]}: not a shared-A expert"
                )
            layer.lora_A[adapter] = first
        dropout = layers[0].lora_dropout[adapter]
        shared = SharedDropout(dropout.p if isinstance(dropout, nn.Dropout) else 0.0, len(layers))
        for layer in layers:
            layer.lora_dropout[adapter] = shared


def tied_width(groups: Mapping[str, Sequence[str]], widths: Mapping[str, tuple[int, int]]) -> int:
    """Input and output widths summed over the expert's modules, each group's shared input counted once:
    the trainable parameters per unit of rank (``widths``: module -> (d_in, d_out))."""
    grouped = {member for members in groups.values() for member in members}
    single = sum(d_in + d_out for name, (d_in, d_out) in widths.items() if name not in grouped)
    return single + sum(widths[members[0]][0] + sum(widths[m][1] for m in members) for members in groups.values())
