"""HiDe-LLaVA (Guo et al., ACL 2025, "HiDe-LLaVA: Hierarchical Decoupling for Continual Instruction Tuning of
Multimodal Large Language Model"; Ghy0501/HiDe-LLaVA at 4dd0793, and MCITlib's ``HiDe``).

Training: task t's LoRA alone, on every layer of the base (``HiDe/peft/tuners/clitmoelora.py``
``HiDeMOELoraLinear.forward`` in training: ``loraA[cur_task]``, ``loraB[cur_task]``). Inference decouples the
layers: every layer but the LLM's last fuses the tasks' LoRAs into one, W + s (B_1 + ... + B_t)(A_1 + ... + A_t)
(``HiDeMOELinearA`` / ``HiDeMOELinearB`` ``forward`` in eval, ``merge_weight`` 1); the LLM's last layer keeps them
apart, W + s sum_k w_k B_k A_k, with w the *task matching* of the sample: softmax over tasks 1..t of
(cos(image feature, image anchor_k) + cos(text feature, text anchor_k)) / 2 at temperature 0.1, an anchor being the
mean of task k's training features (``llava/model/llava_arch.py`` lines 181-215).

The features here are D-MoLE's sequence embedding (`dmole embed`), its vision part and its language part, where
HiDe uses CLIP's image and text encoders: the tasks' ``embed`` artifacts must exist. HiDe splits a rank-48, alpha-96
LoRA among six tasks (``scripts/HiDe/Train_UCIT/Task1.sh``: a rank-8 LoRA per task at scale 2); here each task's LoRA
is every baseline's (D-MoLE's ``seq_lora.sh``: rank 4, alpha 8, also scale 2), and, like the other baselines, on
both towers' projections (HiDe: the LLM's), the vision tower's fused like every layer but the LLM's last.
"""

from __future__ import annotations

from pydantic import Field

from ..errors import UserError
from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun


class HiDeHyper(LoraHyper):
    temperature: float = Field(
        default=0.1, gt=0, description="softmax temperature of the task matching (llava_arch.py: 0.1)"
    )


class HiDe(ContinualMethod):
    name = "hide"
    summary = "HiDe-LLaVA: a LoRA per task, fused in every layer but the LLM's last, matched per sample there"
    Hyper = HiDeHyper

    def trainer(self, run: TrainRun, adapter):
        from .lora import fresh_trainer

        if run.options.expert_type == "dora":
            raise UserError("hide fuses its tasks' LoRAs by summing their A's and B's, which a DoRA has no form of")
        return fresh_trainer(run, adapter)

    def eval_inputs(self, project, after: str) -> list:
        from ..dmole.bank import require_embeddings

        return super().eval_inputs(project, after) + [require_embeddings(project, n) for n in project.config.task_names]

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .hide_layers import decoupled_model, task_matching
        from .lora import experts_around

        index = project.config.task_index(after)
        versions = self.trained_before(project, index + 1)
        experts = decoupled_model(project, adapter, versions)
        learnt = project.config.task_names[:index]
        temperature = self.hyper_of(versions[-1])["temperature"]
        return EvalPlan(
            experts.model,
            self.eval_tasks(project, after),
            routes_for=lambda task, samples, options, split="test": (
                task_matching(project, learnt, task, samples, split, temperature),
                None,
            ),
            around=experts_around(experts, adapter),
        )

    @staticmethod
    def hyper_of(version) -> dict:
        """The hyperparameters the train-task ``version`` ran with."""
        return version.manifest["config"]["hyper"]


METHODS = [HiDe()]
