"""MR-LoRA's router (heavy: torch): its multiple-choice training set, its training after the task's expert, and its
choice of one expert per test sample. The method, and the sources, are `mr_lora.py`."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..data.samples import TrainSample
from ..dmole.experts import LoraSettings
from ..models.base import IGNORE, ChatExample
from .lora import expert_model
from .lora_trainer import LoraTrainer
from .replay import task_buffers

ROUTER_ID = 0  # the router's adapter id beside the experts (task ids start at 1)
ROUTER_FOLDER = "router"


def letter(task_id: int) -> str:
    if not 1 <= task_id <= 26:
        raise ValueError(f"MR-LoRA's router names its experts A to Z, not {task_id}")
    return chr(ord("A") + task_id - 1)


def router_question(question: str, names: list[str]) -> str:
    """The router's question for a sample: which of the experts learnt so far (task 1 = A, ...) answers it."""
    options = "\n".join(f"{letter(k)}. {name}" for k, name in enumerate(names, 1))
    return (
        f"{question}\nWhich task's expert should answer this?\n{options}\n"
        "Answer with the option's letter from the given choices directly."
    )


def router_set(project, task_id: int, hyper) -> list[TrainSample]:
    """The router's training samples after task ``task_id``: ``router_samples`` of each task 1..t, each asking which
    expert answers its question, answered by its own task's letter."""
    names = project.config.task_names[:task_id]
    buffers = task_buffers(project, names, hyper.router_samples, hyper.router_seed)
    return [
        TrainSample(f"{name}/{s.id}", s.image, ((router_question(s.question, names), letter(k)),))
        for k, name in enumerate(names, 1)
        for s in buffers[name]
    ]


def answer_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of its supervised tokens (each predicted from the position before)."""
    targets = labels[:, 1:]
    supervised = targets != IGNORE
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * supervised).sum(1)


class RouterTrainer(LoraTrainer):
    """The router's LoRA (adapter `ROUTER_ID`), saved under ``router/``."""

    folder = ROUTER_FOLDER


class MRLoraTrainer(LoraTrainer):
    """Trains task t's expert alone on the base; saving it then trains and saves a new router on tasks 1..t."""

    def save(self, writer) -> None:
        super().save(writer)
        self.router = self.train_router()
        self.router.save(writer)

    def train_router(self) -> RouterTrainer:
        from ..progress import silent
        from ..training.chat import text_length
        from ..training.inputs import InputPipeline
        from ..training.loop import ParamGroup, train
        from ..training.steps import loop_settings, step_loss

        hyper = self.run.hyper
        samples = router_set(self.run.project, self.run.task_id, hyper)
        options = self.run.options.model_copy(update={"epochs": hyper.router_epochs, "lr": hyper.router_lr})
        run = replace(self.run, task_id=ROUTER_ID, samples=samples, options=options, replayed={})
        router = RouterTrainer(
            run,
            self.adapter,
            self.experts,
            self.modules,
            LoraSettings(hyper.router_rank, hyper.router_alpha, hyper.dropout),
            [(ROUTER_ID,)] * len(samples),
        )
        self.model.train()
        try:
            self.router_log = train(
                self.model,
                [ParamGroup("router", router.params)],
                step_loss(router),
                len(samples),
                loop_settings(options, run.spec),
                progress=silent,
                lengths=[text_length(s) for s in samples],
                inputs=InputPipeline(router.inputs, self.adapter.on_device),
            ).log
        finally:
            self.model.eval()
        return router

    def summary(self) -> dict:
        """After `save`: the router's set and its last loss too."""
        return {
            **super().summary(),
            "router_samples": len(self.router.run.samples),
            "router_final_loss": self.router_log[-1]["loss"],
        }


def routed_by_router(project, adapter, versions: list):
    """The experts of ``versions`` (tasks 1..t's artifacts) with the last one's router, and ``choose(task,
    samples)``: each test sample's route, the one expert the router picks."""
    from ..data.images import load_image
    from ..data.prompts import render_prompt

    experts = expert_model(project, adapter, loaded=dict(enumerate(versions, 1)))
    versions[-1].file(f"{ROUTER_FOLDER}/adapter_model.safetensors")  # checksum-verified before PEFT reads it
    experts.load_expert(ROUTER_ID, versions[-1].path / ROUTER_FOLDER)
    experts.model.eval()
    names = project.config.task_names[: len(versions)]

    def choose(task: str, samples: list) -> list[tuple[int]]:
        spec = project.config.task(task)
        return [
            (
                router_choice(
                    experts, adapter, load_image(s.image), router_question(render_prompt(spec, s), names), len(names)
                ),
            )
            for s in samples
        ]

    return experts, choose


def router_choice(experts, adapter, image, question: str, n_experts: int) -> int:
    """The task id whose letter the router finds the most likely answer to ``question``."""
    examples = [ChatExample(image, [(question, letter(k))]) for k in range(1, n_experts + 1)]
    batch = adapter.on_device(adapter.train_inputs(examples))
    with torch.no_grad(), experts.routed([(ROUTER_ID,)] * n_experts, vision_rows=adapter.vision_row_samples(batch)):
        logits = experts.model(**batch).logits
    return int(answer_log_likelihoods(logits, batch["labels"]).argmax()) + 1
