"""O-LoRA (Wang et al. 2023, Orthogonal Subspace Learning for Language Model Continual Learning).

Each task trains a fresh LoRA while every earlier task's LoRA stays in the model, frozen; the new LoRA's A is
pushed orthogonal to every earlier A of the same module: loss = CE + lambda_1 * sum |A_k A_t^T| + lambda_2 *
sum ||theta_t||_2 over the new LoRA's parameters. As cmnfriend/O-LoRA (src/uie_trainer_lora.py) computes it: the
absolute values of the product summed with no normalisation, the L2 term unsquared per parameter, lambda_1 = 0.5
and lambda_2 = 0 (its code defaults and its order-1/2/3 scripts). The model after task t is every LoRA 1..t.
"""

from __future__ import annotations

from pydantic import Field

from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun


class OLoraHyper(LoraHyper):
    orthogonal_weight: float = Field(default=0.5, ge=0, description="lambda_1 (O-LoRA's default: 0.5)")
    l2_weight: float = Field(default=0.0, ge=0, description="lambda_2 (O-LoRA's default: 0)")


def orthogonality_loss(new: dict, old: list[dict]):
    """sum over earlier adapters and modules of |A_old A_new^T| summed: zero exactly when every row of a new A is
    orthogonal to every row of the earlier A's of its module (``new``, ``old[k]``: module -> A)."""
    return sum((earlier[m] @ a.T).abs().sum() for earlier in old for m, a in new.items())


def l2_norms(params) -> object:
    return sum(p.norm(2) for p in params)


class OLora(ContinualMethod):
    name = "o-lora"
    summary = "O-LoRA: a LoRA per task, all kept; new A orthogonal to the earlier ones"
    Hyper = OLoraHyper
    shardable = False  # its penalty reads the parameters themselves

    def carried(self, run: TrainRun) -> list:
        return self.trained_before(run.project, run.task_id)

    def trainer(self, run: TrainRun, adapter):
        from .lora import LoraTrainer, all_projections, expert_model, lora_settings

        loaded = dict(enumerate(self.trained_before(run.project, run.task_id), 1))
        modules = all_projections(adapter)  # before any adapter wraps the projections
        experts = expert_model(run.project, adapter, loaded=loaded)
        everyone = tuple(range(1, run.task_id + 1))
        trainer = LoraTrainer(run, adapter, experts, modules, lora_settings(run.hyper), [everyone] * len(run.samples))

        def lora_a(task_id: int) -> dict:
            return {k: p for k, p in trainer.adapter_params(task_id).items() if ".lora_A." in k}

        new, old = lora_a(run.task_id), [lora_a(k) for k in loaded]
        trainer.losses_fn = lambda model, batch, outputs, before: {
            "orthogonal": run.hyper.orthogonal_weight * orthogonality_loss(new, old),
            "l2": run.hyper.l2_weight * l2_norms(trainer.params)}
        return trainer

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import routed_plan

        task_id = project.config.task_index(after)
        return routed_plan(project, adapter, self.eval_tasks(project, after),
                           dict(enumerate(self.eval_inputs(project, after), 1)), tuple(range(1, task_id + 1)))


METHODS = [OLora()]
