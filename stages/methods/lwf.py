"""LwF-LoRA (Li & Hoiem 2017, Learning without Forgetting, on one LoRA continued across tasks).

While learning task t, the model is also pulled towards the previous model's (task t-1's) output distribution on
task t's own inputs. As BeyonderXX/TRACE computes it (model/Regular/LwF.py, ``KD_loss`` lines 25-36, added to the
loss unweighted at line 86), the CoIN-style benchmarks' usual LLM reference (CoIN has no LwF code):
``kl_div(log_softmax(old / T), softmax(new / T), reduction='batchmean')``, which is KL(new || old) = sum p_new
(log p_new - log p_old), summed over every position of the logits (padding, prompt and image positions included:
TRACE passes no mask) and the vocabulary, divided by the batch size; T = 2 (line 86), no T^2 factor, weight 1.
So the term grows with the sequence length, as TRACE's does. One deliberate difference: TRACE records the old
logits with the model still in training mode (dropout on: ``new_input_old_model_logits``, line 45, runs after
``model.train()``, line 70, with no ``eval()``); here the teacher runs without dropout, so at the start of a task
student and teacher agree.
"""

from __future__ import annotations

from pydantic import Field
from typing_extensions import override

from .base import LoraHyper
from .continued import ContinuedLora
from .lora_trainer import LoraTrainer


class LwfHyper(LoraHyper):
    temperature: float = Field(default=2.0, gt=0, description="distillation temperature T (TRACE: 2)")
    weight: float = Field(default=1.0, ge=0, description="weight of the distillation term (TRACE: 1)")


def distillation_loss(logits, targets, temperature: float):
    """TRACE's LwF term: KL(softmax(logits / T) || softmax(targets / T)) summed over every position and the
    vocabulary, divided by the batch size (``logits``, ``targets``: batch x positions x vocabulary)."""
    import torch.nn.functional as F

    old = F.log_softmax(targets.float() / temperature, dim=-1)
    new = F.log_softmax(logits.float() / temperature, dim=-1)
    return F.kl_div(old, new, reduction="batchmean", log_target=True)


class LwfTrainer(LoraTrainer):
    """The continued LoRA, distilled from the second task on towards the previous model's outputs."""

    def before(self, model, batch: dict, indices: list[int]):
        """The previous model's logits (its adapter, no dropout): what LwF distils towards."""
        if self.previous is None:
            return None
        import torch

        training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.routed([(self.run.task_id - 1,)] * len(indices), batch):
                return model(**batch).logits.detach()
        finally:
            model.train(training)

    @override
    def extra_losses(self, model, batch: dict, outputs, before) -> dict:
        if before is None:
            return {}
        hyper = self.run.hyper
        return {"lwf": hyper.weight * distillation_loss(outputs.logits, before, hyper.temperature)}


class LwfLora(ContinuedLora):
    name = "lwf-lora"
    summary = "LwF-LoRA: one LoRA continued, distilled towards the previous model's outputs"
    Hyper = LwfHyper
    sweep_grid = ("weight", (0.1, 1.0, 10.0))

    Trainer = LwfTrainer


METHODS = [LwfLora()]
