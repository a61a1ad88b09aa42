"""LwF-LoRA (Li & Hoiem 2017, Learning without Forgetting, on one LoRA continued across tasks).

While learning task t, the model is also pulled towards the previous model's (task t-1's) output distribution on
task t's own inputs: loss = CE + weight * KL(softmax(old / T) || softmax(new / T)), averaged over the non-padding
positions. Defaults follow BeyonderXX/TRACE (model/Regular/LwF.py), the common LLM continual-learning reference
(CoIN has no LwF code): T = 2, weight 1, every non-padding position. Two deliberate differences: TRACE calls
``kl_div(log_softmax(old), softmax(new))``, which is KL(new || old); this is the KL towards the old model LwF
defines. And TRACE divides by the batch size ('batchmean'), so its term grows with sequence length; here it is a
mean over positions.
"""

from __future__ import annotations

from pydantic import Field

from .base import LoraHyper, TrainRun
from .continued import ContinuedLora


class LwfHyper(LoraHyper):
    temperature: float = Field(default=2.0, gt=0, description="distillation temperature T (TRACE: 2)")
    weight: float = Field(default=1.0, ge=0, description="weight of the distillation term (TRACE: 1)")


def distillation_loss(logits, targets, mask, temperature: float):
    """Mean over the positions where ``mask`` is 1 of KL(softmax(targets / T) || softmax(logits / T))."""
    import torch.nn.functional as F

    old = F.log_softmax(targets.float() / temperature, dim=-1)
    new = F.log_softmax(logits.float() / temperature, dim=-1)
    per_position = (old.exp() * (old - new)).sum(-1)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


class LwfLora(ContinuedLora):
    name = "lwf-lora"
    summary = "LwF-LoRA: one LoRA continued, distilled towards the previous model's outputs"
    Hyper = LwfHyper

    def trainer(self, run: TrainRun, adapter):
        trainer = super().trainer(run, adapter)
        if run.task_id > 1:
            previous = (run.task_id - 1,)

            def targets(model, batch: dict, indices: list[int]):
                """The previous model's logits (its adapter, no dropout): what LwF distils towards."""
                import torch

                training = model.training
                model.eval()
                try:
                    with torch.no_grad(), trainer.routed([previous] * len(indices), batch):
                        return model(**batch).logits.detach()
                finally:
                    model.train(training)

            def distill(model, batch: dict, outputs, old_logits) -> dict:
                loss = distillation_loss(outputs.logits, old_logits, batch["attention_mask"], run.hyper.temperature)
                return {"lwf": run.hyper.weight * loss}

            trainer.before_fn, trainer.losses_fn = targets, distill
        return trainer


METHODS = [LwfLora()]
