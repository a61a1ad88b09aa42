"""EWC-LoRA (Kirkpatrick et al. 2017, Elastic Weight Consolidation, on one LoRA continued across tasks).

As BeyonderXX/TRACE implements it (model/Regular/EWC.py; CoIN has no EWC code): while learning task t, loss = CE +
weight / 2 * sum F (theta - theta_{t-1})^2 (line 77), anchored at task t-1's adapter (line 50), weight (lambda)
400 (line 13). The diagonal Fisher F is accumulated during training: after every optimizer step each parameter's
squared gradient (of the whole loss, NaN set to 0: lines 83, 123) divided by the steps in one epoch
(``train_length``, lines 40, 102) is added to it. It is never reset (``_regular_fisher`` is commented out, line
135), so it is a running sum over the tasks, and the penalty reads it as it grows, task t's own steps included.
"""

from __future__ import annotations

import math

from pydantic import Field
from typing_extensions import override

from .base import LoraHyper
from .continued import ContinuedLora
from .lora_trainer import LoraTrainer

FISHER = "fisher.safetensors"


class EwcHyper(LoraHyper):
    weight: float = Field(default=400.0, ge=0, description="lambda of the quadratic penalty (TRACE EWC.py: 400)")


def ewc_penalty(params: dict, anchors: dict, fisher: dict, weight: float):
    """weight / 2 * sum over parameters of F * (theta - theta_anchor)^2."""
    return weight / 2 * sum((fisher[k] * (params[k] - anchors[k]) ** 2).sum() for k in params)


class FisherAccumulator:
    """TRACE's running diagonal Fisher: called after each step's backward, it adds grad^2 / ``steps_per_epoch``
    per parameter to ``state`` (which starts from the earlier tasks' sum)."""

    def __init__(self, params: dict, earlier: dict | None, steps_per_epoch: int):
        import torch

        self.params, self.steps_per_epoch = params, steps_per_epoch
        self.state = {
            k: (
                earlier[k].to(p.device, torch.float32).clone()
                if earlier is not None
                else torch.zeros_like(p, dtype=torch.float32)
            )
            for k, p in params.items()
        }

    def __call__(self) -> None:
        import torch

        with torch.no_grad():
            for k, p in self.params.items():
                if p.grad is not None:
                    self.state[k] += torch.nan_to_num(p.grad.float(), nan=0.0) ** 2 / self.steps_per_epoch


class EwcTrainer(LoraTrainer):
    """The continued LoRA, its running Fisher accumulated after every step (`gradient_hook`) and saved with it,
    anchored from the second task on at task t-1's adapter by the Fisher-weighted penalty."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from safetensors.torch import load_file

        run = self.run
        self.penalised = self.adapter_params(run.task_id)
        earlier = load_file(self.previous.file(FISHER)) if self.previous is not None else None
        self.gradient_hook = FisherAccumulator(
            self.penalised, earlier, math.ceil(len(run.samples) / run.options.batch_for(run.spec))
        )
        self.anchors = (
            None
            if self.previous is None
            else {k: p.detach().clone() for k, p in self.adapter_params(run.task_id - 1).items()}
        )

    @override
    def extra_losses(self, model, batch: dict, outputs, before) -> dict:
        if self.anchors is None:
            return {}
        return {"ewc": ewc_penalty(self.penalised, self.anchors, self.gradient_hook.state, self.run.hyper.weight)}

    def record(self, writer) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.gradient_hook.state.items()}, writer.path(FISHER))


class EwcLora(ContinuedLora):
    name = "ewc-lora"
    summary = "EWC-LoRA: one LoRA continued, anchored by the Fisher accumulated while training"
    Hyper = EwcHyper
    sweep_grid = ("weight", (40.0, 400.0, 4000.0))
    shardable = False  # its penalty reads the parameters themselves
    Trainer = EwcTrainer


METHODS = [EwcLora()]
