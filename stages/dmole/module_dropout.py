"""train-task's ``dropout_mask: shared``: one LoRA dropout mask per forward of a module, shared by its experts.

PEFT gives every adapter of a layer its own ``nn.Dropout``, so a module that k routed experts sit on draws k masks
over its input in each forward, as the reference does (gcd19/D-MoLE's ``DMoLELinear.forward`` calls its dropout
once per selected expert); that stays the default (``per-expert``). A mask costs B·L·d_in random numbers against
the B·L·r·(d_in + d_out) multiply-adds of a rank-r LoRA, and random numbers are slow to draw on a CPU: at a small
width, a frozen partner expert's own mask is a visible share of a training step (docs/benchmarks.md).

`share_dropout` replaces each adapter's ``nn.Dropout`` of a LoRA layer with a `ModuleDropout` that reads the layer's
`_Masks`: the first expert to run in a forward draws the mask at its rate, the others at that rate reuse it, and
the layer's forward hooks forget it when the forward begins and ends. Each expert still sees dropout at its own
rate, distributed as ``nn.Dropout``'s; only the experts of one module no longer draw independent masks. Recomputing
a forward under gradient checkpointing draws the same mask again, as torch restores the RNG state for it. A
shared-A group's dropout (`shared_lora.SharedDropout`, one mask across q, k and v) is left as it is.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn


class _Masks:
    """One forward's dropout masks of one layer, by rate and input shape."""

    def __init__(self) -> None:
        self.drawn: dict[tuple, torch.Tensor] = {}

    def forget(self, *_hook_args) -> None:
        self.drawn.clear()

    def mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        key = (p, x.shape, x.dtype, x.device)
        if key not in self.drawn:
            self.drawn[key] = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
        return self.drawn[key]


class ModuleDropout(nn.Module):
    """An adapter's dropout at rate ``p`` whose mask is its layer's one mask at that rate for this forward."""

    def __init__(self, p: float, masks: _Masks):
        super().__init__()
        self.p, self._masks = p, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * self._masks.mask(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared by the layer's experts"


def share_dropout(model: nn.Module) -> None:
    """Give every LoRA layer of ``model`` one dropout mask per forward for all its adapters (idempotent: adapters
    added since the last call join their layer's mask)."""
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        dropouts = layer.lora_dropout
        fresh = [name for name, dropout in dropouts.items() if type(dropout) is nn.Dropout]
        if not fresh:
            continue
        masks = next((d._masks for d in dropouts.values() if isinstance(d, ModuleDropout)), None)
        if masks is None:
            masks = _Masks()
            layer.register_forward_pre_hook(masks.forget)
            layer.register_forward_hook(masks.forget)
        for name in fresh:
            dropouts[name] = ModuleDropout(dropouts[name].p, masks)
