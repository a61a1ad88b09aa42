"""FSDP2 for the training loop: parameters sharded across processes (torch's ``fully_shard``, what accelerate's
FSDP2 applies), for models whose training state does not fit one device.

A working copy of the model is sharded, each stack of layers (every ``nn.ModuleList`` element) a unit and the
root last, and trains; the caller's model stays whole and untouched and gets the trained tensors, gathered to
whole tensors by name, at the end. Sharding thus divides the gradients, the optimizer state and the trained
parameters between processes, while each still holds the whole model once for what comes after training. So
everything after training (saving PEFT folders and RoE weights, evaluations that split batches unevenly between
processes) runs on ordinary modules, exactly as without sharding. Requested with
``accelerate launch --use_fsdp --fsdp_version 2``; it runs on the CPU over gloo too, where accelerate itself does
not shard.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


class ShardedCopy:
    """The sharded working copy of ``model``; ``groups`` are the caller's parameter groups (of ``model``)."""

    def __init__(self, model: nn.Module, groups: Sequence, world: int):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.original = model
        names = {id(p): n for n, p in model.named_parameters()}
        self.names = [[names[id(p)] for p in group.params] for group in groups]
        self.model = copy.deepcopy(model)
        mesh = init_device_mesh(next(model.parameters()).device.type, (world,))
        for stack in [m for m in self.model.modules() if isinstance(m, nn.ModuleList)]:
            for layer in stack:
                if any(True for _ in layer.parameters()):
                    fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self.sharded = dict(self.model.named_parameters())

    def params(self, group: int) -> list[nn.Parameter]:
        """The sharded parameters of the caller's group ``group``, in its order."""
        return [self.sharded[name] for name in self.names[group]]

    def set_gradient_sync(self, sync: bool) -> None:
        """Reduce-scatter gradients in this backward (the last micro-batch of a step) or keep accumulating."""
        self.model.set_requires_gradient_sync(sync)

    def whole(self) -> dict[str, torch.Tensor]:
        """Every trained parameter as a whole tensor, by name (a collective: every process calls it)."""
        return {name: _whole(self.sharded[name]) for names in self.names for name in names}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state with whole tensors, keyed by parameter name (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def finish(self) -> None:
        """Copy the trained tensors into the caller's whole model and drop the copy."""
        trained = self.whole()
        current = dict(self.original.named_parameters())
        with torch.no_grad():
            for name, tensor in trained.items():
                current[name].copy_(tensor)
        self.model = self.sharded = None


def _whole(param: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (param.full_tensor() if isinstance(param, DTensor) else param).detach()
