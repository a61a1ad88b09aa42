"""MoELoRA as CoIN implements it (zackschen/CoIN, CoIN/peft/tuners/coinmoelora.py): on every adapted projection,
several LoRA experts whose outputs a per-layer linear router mixes per token by a dense softmax (no top-k, no
load-balancing loss), one MoELoRA continued from task to task (CoIN's previous_task_model_path).

Defaults: CoIN splits its total rank among the experts (rank 128 over 8 experts in its scripts; its code default
is 4 experts). Here the total rank is the other baselines' 4, so that MoELoRA trains as many LoRA parameters as
they do (plus its routers); 4 experts (CoIN's code default) is the most that divides it. Each expert draws its own
dropout mask, as CoIN's forward calls its dropout inside the loop over the experts. alpha = 2 x rank as CoIN's
scripts (256 / 128). Like the other baselines it adapts both towers' projections (CoIN: the LLM's only).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import EvalPlan, LoraHyper, TrainRun
from .continued import ContinuedLora


class MoELoraHyper(LoraHyper):
    experts: int = Field(
        default=4, gt=0, description="LoRA experts per projection; must divide the rank (CoIN's code default: 4)"
    )

    @model_validator(mode="after")
    def _rank_splits(self) -> MoELoraHyper:
        if self.rank % self.experts:
            raise ValueError(
                f"the rank ({self.rank}) is split among the experts: it must be a multiple of experts ({self.experts})"
            )
        return self


class MoELora(ContinuedLora):
    name = "moelora"
    summary = "MoELoRA (CoIN): per projection, LoRA experts mixed per token by a learned router"
    Hyper = MoELoraHyper

    def trainer(self, run: TrainRun, adapter):
        from .lora import all_projections
        from .moe_layers import MoELoraTrainer

        return MoELoraTrainer(run, adapter, all_projections(adapter), self.previous(run.project, run.task_id))

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .moe_layers import load_moelora

        return EvalPlan(load_moelora(adapter.model, self.trained(project, after)), self.eval_tasks(project, after))


METHODS = [MoELora()]
