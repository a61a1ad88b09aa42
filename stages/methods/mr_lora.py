"""MR-LoRA (Zhao et al. 2025, "MLLM-CL: Continual Learning for Multimodal Large Language Models";
bjzhb666/MLLM-CL, and its MCITlib port): one LoRA expert per task, trained alone on the base, and a router that
picks one expert per test sample.

The router is itself the base model with a LoRA of its own, fine-tuned on a few samples of every task learnt so far
to answer a multiple-choice question: which expert answers this sample ("Answer with the option's letter from the
given choices directly", ``ETrain/Eval/LLaVA/CoIN/model_router.py``; option A is task 1, B task 2, ... as MCITlib's
``MR-LoRA/scripts/UCIT_extract_router_result.py`` maps them). Inference is two-stage: the router's answer names an
expert, and that expert alone (on the base) answers the sample (MLLM-CL's README, "MR-LoRA framework").

Sources of the defaults: each expert trains alone from the base (``scripts/LLaVA/Train_dom_single/README.md``; its
LoRA settings here are every baseline's, D-MoLE's ``seq_lora.sh``); the router trains from the base on 20 samples
per task (``task5Router_train20.json``, ``num5sample_images20/`` in the README's data layout) with rank 128,
alpha 256, learning rate 5e-6 for 40 epochs (``scripts/LLaVA/Train_dom_single/0_train_router.sh``). A new router is
trained after each task on tasks 1..t, in the same train-task run as expert t (saved beside it, ``router/``).
Differences: the options name the tasks (the reference's router files are not public code), and the router's choice
is the option whose answer it finds most likely (the reference generates freely and drops a sample whose answer is
no option's letter); like the other baselines both towers are adapted.
"""

from __future__ import annotations

from pydantic import Field

from .base import ContinualMethod, EvalPlan, LoraHyper, TrainRun


class MRLoraHyper(LoraHyper):
    router_samples: float = Field(
        default=20,
        gt=0,
        description="router training samples per task: a count or a fraction below 1 (MLLM-CL's router files: 20)",
    )
    router_rank: int = Field(default=128, gt=0, description="the router's LoRA rank (0_train_router.sh: 128)")
    router_alpha: int = Field(default=256, gt=0, description="the router's LoRA alpha (0_train_router.sh: 256)")
    router_epochs: float = Field(default=40, gt=0, description="epochs over the router set (0_train_router.sh: 40)")
    router_lr: float = Field(default=5e-6, gt=0, description="the router's learning rate (0_train_router.sh: 5e-6)")
    router_seed: int = Field(default=42, description="seed of the router set's draw (with each task's name)")


class MRLora(ContinualMethod):
    name = "mr-lora"
    summary = "MR-LoRA: a LoRA expert per task, one picked per sample by a LoRA-tuned router MLLM"
    Hyper = MRLoraHyper

    def trainer(self, run: TrainRun, adapter):
        from .lora import fresh_trainer
        from .mr_lora_router import MRLoraTrainer

        return fresh_trainer(run, adapter, MRLoraTrainer)

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from .lora import experts_around
        from .mr_lora_router import routed_by_router

        index = project.config.task_index(after)
        experts, choose = routed_by_router(project, adapter, self.trained_before(project, index + 1))
        return EvalPlan(
            experts.model,
            self.eval_tasks(project, after),
            routes_for=lambda task, samples, options, split="test": (choose(task, samples), None),
            around=experts_around(experts, adapter),
        )


METHODS = [MRLora()]
