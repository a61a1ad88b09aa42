"""EWC-LoRA (Kirkpatrick et al. 2017, Elastic Weight Consolidation, on one LoRA continued across tasks).

After each task the diagonal Fisher of the LoRA parameters is estimated from squared gradients of the answer loss
on the task's training data and added to the earlier tasks' (a running sum, never decayed); while learning task
t, loss = CE + weight / 2 * sum F (theta - theta_{t-1})^2, anchored at task t-1's adapter. Defaults follow
BeyonderXX/TRACE (model/Regular/EWC.py; CoIN has no EWC code): weight (lambda) 400, the Fisher as the mean of
squared gradients over batches, summed over tasks. TRACE accumulates it during training; here it is measured once
on the trained adapter, as EWC defines it.
"""

from __future__ import annotations

from pydantic import Field

from .base import LoraHyper, TrainRun
from .continued import ContinuedLora

FISHER = "fisher.safetensors"


class EwcHyper(LoraHyper):
    weight: float = Field(default=400.0, ge=0, description="lambda of the quadratic penalty (TRACE: 400)")
    fisher_batch: int = Field(default=4, gt=0, description="samples per gradient in the Fisher estimate")


def ewc_penalty(params: dict, anchors: dict, fisher: dict, weight: float):
    """weight / 2 * sum over parameters of F * (theta - theta_anchor)^2."""
    return weight / 2 * sum((fisher[k] * (params[k] - anchors[k]) ** 2).sum() for k in params)


def diagonal_fisher(trainer, batch_size: int) -> dict:
    """Mean over batches of the squared gradients of the answer loss, per parameter of the trained adapter."""
    import torch

    params = trainer.adapter_params(trainer.run.task_id)
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    chunks = [list(range(i, min(i + batch_size, len(trainer.run.samples))))
              for i in range(0, len(trainer.run.samples), batch_size)]
    trainer.model.eval()
    for indices in chunks:
        trainer.model.zero_grad(set_to_none=True)
        batch = trainer.adapter.on_device(trainer.inputs(indices))
        with trainer.route(indices, batch):
            trainer.model(**batch).loss.backward()
        for k, p in params.items():
            if p.grad is not None:
                fisher[k] += p.grad.detach() ** 2 / len(chunks)
    trainer.model.zero_grad(set_to_none=True)
    return fisher


class EwcLora(ContinuedLora):
    name = "ewc-lora"
    summary = "EWC-LoRA: one LoRA continued, anchored by the accumulated diagonal Fisher"
    Hyper = EwcHyper
    shardable = False  # its penalty reads the parameters themselves

    def trainer(self, run: TrainRun, adapter):
        from safetensors.torch import load_file, save_file

        trainer = super().trainer(run, adapter)
        previous = self.previous(run.project, run.task_id)
        earlier = load_file(previous.file(FISHER)) if previous is not None else None
        if earlier is not None:
            params = trainer.adapter_params(run.task_id)
            anchors = {k: p.detach().clone() for k, p in trainer.adapter_params(run.task_id - 1).items()}
            fisher = {k: earlier[k].to(p.device) for k, p in params.items()}
            trainer.losses_fn = lambda model, batch, outputs, before: {
                "ewc": ewc_penalty(params, anchors, fisher, run.hyper.weight)}

        def record(writer) -> None:
            fisher = diagonal_fisher(trainer, run.hyper.fisher_batch)
            if earlier is not None:
                fisher = {k: v + earlier[k].to(v.device) for k, v in fisher.items()}
            save_file({k: v.contiguous().cpu() for k, v in fisher.items()}, writer.path(FISHER))

        trainer.record = record
        return trainer


METHODS = [EwcLora()]
