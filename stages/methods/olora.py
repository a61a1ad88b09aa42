"""O-LoRA (Wang et al. 2023, Orthogonal Subspace Learning for Language Model Continual Learning).

Each task trains a fresh LoRA while every earlier task's LoRA stays in the model, frozen; the new LoRA's A is
pushed orthogonal to every earlier A of the same module: loss = CE + lambda_1 * sum |A_k A_t^T| + lambda_2 *
sum ||theta_t||_2 over the new LoRA's parameters, as cmnfriend/O-LoRA computes it (src/uie_trainer_lora.py lines
91-109: the absolute values of the product summed with no normalisation, the L2 term unsquared per parameter).

Two references fix where the LoRAs sit and lambda_1, and they go together. O-LoRA itself (text-only T5/LLaMA)
adapts q and v only (src/run_uie_lora.py line 380 names no target modules, so PEFT's default for the model,
src/peft/utils/other.py line 184: t5 ["q", "v"], llama q_proj/v_proj) with lambda_1 = 0.5 (line 240 and its
order scripts, scripts/order_1.sh line 42). MCITlib's multimodal port (Ghy0501/MCITlib OLoRA/llava/train/train.py
lines 168-181 and 873, every linear layer of the LLM) uses lambda_1 = 0.05 (OLoRA/llava/train/llava_trainer.py
line 323). The default here is the multimodal port's, targets "all" with lambda_1 0.05: it is the reference for
this setting (a vision-language model with every projection adapted, like the other baselines here), where
O-LoRA's 0.5 was set for q and v alone. ``targets=qv lambda1=0.5`` is O-LoRA's own configuration. lambda_2 = 0 in
both. The model after task t is every LoRA 1..t.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import override

from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun
from .lora_trainer import LoraTrainer


class OLoraHyper(LoraHyper):
    targets: Literal["all", "qv"] = Field(
        default="all",
        description="the projections each LoRA adapts: all (MCITlib's multimodal O-LoRA: every "
        "linear layer) or qv (O-LoRA's own: q and v; a fused qkv where a tower has one)",
    )
    lambda1: float = Field(
        default=0.05,
        ge=0,
        description="lambda_1, the orthogonality weight (MCITlib's "
        "multimodal O-LoRA: 0.05 over every projection; O-LoRA's "
        "own: 0.5 over q and v)",
    )
    lambda2: float = Field(default=0.0, ge=0, description="lambda_2, the L2 weight (O-LoRA and MCITlib: 0)")


def orthogonality_loss(new: dict, old: list[dict]):
    """sum over earlier adapters and modules of |A_old A_new^T| summed: zero exactly when every row of a new A is
    orthogonal to every row of the earlier A's of its module (``new``, ``old[k]``: module -> A; under parity an
    earlier adapter may sit on fewer modules)."""
    return sum((earlier[m] @ a.T).abs().sum() for earlier in old for m, a in new.items() if m in earlier)


def l2_norms(params) -> object:
    return sum(p.norm(2) for p in params)


class OLoraTrainer(LoraTrainer):
    """Task t's fresh LoRA beside every earlier one (frozen), its A pushed orthogonal to theirs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = self.lora_a(self.run.task_id)
        self.old = [self.lora_a(task_id) for task_id in range(1, self.run.task_id)]

    def lora_a(self, task_id: int) -> dict:
        return {k: p for k, p in self.adapter_params(task_id).items() if ".lora_A." in k}

    @override
    def extra_losses(self, model, batch: dict, outputs, before) -> dict:
        hyper = self.run.hyper
        return {
            "orthogonal": hyper.lambda1 * orthogonality_loss(self.new, self.old),
            "l2": hyper.lambda2 * l2_norms(self.params),
        }


class OLora(ContinualMethod):
    name = "o-lora"
    summary = "O-LoRA: a LoRA per task, all kept; new A orthogonal to the earlier ones"
    Hyper = OLoraHyper
    sweep_grid = ("lambda1", (0.005, 0.05, 0.5))
    shardable = False  # its penalty reads the parameters themselves

    def carried(self, run: TrainRun) -> list:
        return self.trained_before(run.project, run.task_id)

    def trainer(self, run: TrainRun, adapter):
        from .lora import baseline_shape, expert_model, target_projections

        loaded = dict(enumerate(self.trained_before(run.project, run.task_id), 1))
        shape = baseline_shape(run, adapter, target_projections(adapter, run.hyper.targets))  # before any wrapping
        experts = expert_model(run.project, adapter, loaded=loaded)
        everyone = tuple(range(1, run.task_id + 1))
        return OLoraTrainer.shaped(run, adapter, experts, shape, [everyone] * len(run.samples))

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import routed_plan

        task_id = project.config.task_index(after)
        return routed_plan(
            project,
            adapter,
            self.eval_tasks(project, after),
            dict(enumerate(self.eval_inputs(project, after), 1)),
            tuple(range(1, task_id + 1)),
        )


METHODS = [OLora()]
