"""The upper bound: an independent LoRA per task, used only on its own task (oracle routing).

Its stage-t model answers a seen task i with adapter i and an unseen task with the base, so evaluation runs each
adapter on its own task only, and the report fills the rest of row t from those runs and the zero-shot row.
"""

from __future__ import annotations

from .base import ContinualMethod, EvalPlan, LoraHyper, Matrix, TrainRun


class Finetune(ContinualMethod):
    name = "finetune"
    summary = "upper bound: an independent LoRA per task, each used on its own task only"
    Hyper = LoraHyper

    def trainer(self, run: TrainRun, adapter):
        from .lora import fresh_trainer

        return fresh_trainer(run, adapter)

    def eval_tasks(self, project, after: str) -> list[str]:
        self.check_after(project, after)
        return [after]

    def eval_inputs(self, project, after: str) -> list:
        return [self.trained(project, after)]

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import routed_plan

        task_id = project.config.task_index(after)
        return routed_plan(project, adapter, [after], {task_id: self.trained(project, after)}, (task_id,))

    def matrix(self, zero, rows, names) -> Matrix | None:
        if not rows:
            return None
        diagonal = [rows[n][i] if n in rows else None for i, n in enumerate(names)]
        return [zero] + [
            [diagonal[i] if i < t else zero[i] for i in range(len(names))] for t in range(1, len(names) + 1)
        ]


METHODS = [Finetune()]
