"""Joint learning: one LoRA trained once on the union of every task's data (multi-task, no sequence); evaluated
once, which fills only the last row of its continual matrix.

As the spec defines it, the union repeats each task by its epoch count (the epochs every other method trains that
task with: the train-task option, else the registry's) and is shuffled; train-task makes one pass over it at the
batch size of the task with the most samples in it (`training.steps.loop_settings`, `train_task._samples`)."""

from __future__ import annotations

from typing_extensions import override

from ..errors import UserError
from .base import JOINT_TASK, ContinualMethod, EvalPlan, LoraHyper, Matrix, TrainRun


class Joint(ContinualMethod):
    name = "joint"
    summary = "multi-task reference: one LoRA trained once on every task"
    Hyper = LoraHyper

    @override
    def stages_after(self, project) -> list[str]:
        return [JOINT_TASK]

    @override
    def check_after(self, project, after: str) -> None:
        if after != JOINT_TASK:
            raise UserError(
                f"joint learns every task at once, so it trains and is evaluated once: use "
                f"`{JOINT_TASK}` (--task {JOINT_TASK}, --after {JOINT_TASK}), not {after!r}"
            )

    def training_tasks(self, project, task: str):
        self.check_after(project, task)
        return list(project.config.task_names), 1, None

    def trainer(self, run: TrainRun, adapter):
        from .lora import fresh_trainer

        return fresh_trainer(run, adapter)  # adapter 1, as training_tasks gives it

    @override
    def eval_inputs(self, project, after: str) -> list:
        return [self.trained(project, JOINT_TASK)]

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import routed_plan

        return routed_plan(
            project, adapter, self.eval_tasks(project, after), {1: self.trained(project, JOINT_TASK)}, (1,)
        )

    def matrix(self, zero, rows, names) -> Matrix | None:
        if JOINT_TASK not in rows:
            return None
        return [zero] + [[None] * len(names) for _ in names[1:]] + [rows[JOINT_TASK]]


METHODS = [Joint()]
