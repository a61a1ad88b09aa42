"""Seq-FT as the D-MoLE reference trains it (seq_lora.sh): per task a fresh LoRA on every projection of both
towers, trained on the base with every earlier task's LoRA merged in, then merged itself. One model, no routing."""

from __future__ import annotations

from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun
from .lora_trainer import LoraTrainer


class SeqLora(ContinualMethod):
    name = "seq-lora"
    summary = "Seq-FT: a fresh LoRA per task on the model with the earlier ones merged in"
    Hyper = LoraHyper

    def carried(self, run: TrainRun) -> list:
        return self.trained_before(run.project, run.task_id)

    def trainer(self, run: TrainRun, adapter):
        return self.merged_trainer(run, adapter, LoraTrainer)

    def merged_trainer(self, run: TrainRun, adapter, trainer_class, **extra):
        """A ``trainer_class`` (a `LoraTrainer`; ``extra``: its own arguments) training a fresh adapter on the base
        with the earlier tasks' adapters merged in."""
        from .lora import all_projections, baseline_shape, expert_model, merged_model

        shape = baseline_shape(run, adapter, all_projections(adapter))
        base = merged_model(adapter, self.trained_before(run.project, run.task_id))
        experts = expert_model(run.project, adapter, base)
        return trainer_class.shaped(run, adapter, experts, shape, [(run.task_id,)] * len(run.samples), **extra)

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import merged_model

        return EvalPlan(merged_model(adapter, self.eval_inputs(project, after)), self.eval_tasks(project, after))


METHODS = [SeqLora()]
