"""What the methods that keep one LoRA across tasks share (CoIN's Seq-FT continues its LoRA this way): task t's
adapter starts from task t-1's, and the model after task t is that one adapter, for every task."""

from __future__ import annotations

from typing import ClassVar

from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun
from .lora_trainer import LoraTrainer


class ContinuedLora(ContinualMethod):
    Hyper = LoraHyper
    Trainer: ClassVar[type[LoraTrainer]] = LoraTrainer  # a method's own hooks subclass it

    def previous(self, project, task_id: int):
        """Task t-1's trained artifact (None for the first task)."""
        return self.trained(project, project.config.task_names[task_id - 2]) if task_id > 1 else None

    def carried(self, run: TrainRun) -> list:
        previous = self.previous(run.project, run.task_id)
        return [previous] if previous is not None else []

    def trainer(self, run: TrainRun, adapter):
        from .lora import continued_trainer

        return continued_trainer(self, run, adapter, self.Trainer)

    def eval_inputs(self, project, after: str) -> list:
        return [self.trained(project, after)]

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import routed_plan

        task_id = project.config.task_index(after)
        return routed_plan(
            project, adapter, self.eval_tasks(project, after), {task_id: self.trained(project, after)}, (task_id,)
        )
