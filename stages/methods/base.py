"""The method interface: what a continual method trains, what it carries from earlier tasks, how evaluation builds
its model for a stage, and its row in the report.

A method is one module under `stages/methods/` with one `ContinualMethod` subclass, registered in
`stages/methods/__init__.py`. The stages only call this interface: train-task asks the method for a `Trainer`
(the model, the parameters to train, the routing around each batch, extra loss terms, what to save), eval asks
it for an `EvalPlan`, the report for its continual matrix. This module imports no torch, so the CLI and the
light stages can list methods cheaply; the methods import their heavy parts inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from dmole.artifacts import Version

from ..config import Strict, TaskSpec
from ..errors import UserError
from ..registry import ALLOCATE, TRAIN_TASK

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..data.samples import TrainSample
    from ..options import TrainTaskOptions
    from ..project import Project

JOINT_TASK = "all"  # the task name of a method that trains once on every task
ZERO_SHOT = "zero-shot"  # the evaluation of the base model: row 0 of every method's matrix


class NoHyper(Strict):
    """A method without hyperparameters of its own."""


class LoraHyper(Strict):
    """One LoRA on every attention and MLP projection of both towers, as the D-MoLE reference trains its
    baseline (gcd19/D-MoLE seq_lora.sh): rank 4, alpha = 2 x rank, dropout 0.05. That trains about three times
    D-MoLE's parameters per task (InternVL2-2B: 5.5 M against 1.6-2.0 M); ``parity`` sizes it to D-MoLE's."""

    rank: int = Field(default=4, gt=0, description="LoRA rank (D-MoLE's seq_lora.sh: 4)")
    alpha: int = Field(default=8, gt=0, description="LoRA alpha, scale alpha / rank (seq_lora.sh: 2 x rank)")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout (seq_lora.sh: 0.05)")
    parity: bool = Field(
        default=False,
        description="match D-MoLE's trainable parameters per task (its allocate "
        "arch.json expert_parameters): the largest rank (alpha scaled "
        "with it) whose count is not above D-MoLE's replaces rank; off "
        "by default, as the references train their own sizes",
    )


def parity_allocations(run: TrainRun) -> list[Version]:
    """Under ``parity``, D-MoLE's allocation of each task the run learns, whose ``expert_parameters`` set the
    baseline's size (recorded as inputs of the run)."""
    if not getattr(run.hyper, "parity", False):
        return []
    tasks = list(run.union) if run.union else [run.task]
    return [run.project.store.require(ALLOCATE.name, task, hint=ALLOCATE.hint(task)) for task in tasks]


def stage_name(stage: str, method: str) -> str:
    """Artifacts of every method but D-MoLE live beside D-MoLE's under a method prefix: ``seq-lora.train-task``."""
    return stage if method == "dmole" else f"{method}.{stage}"


def method_flag(method: str) -> str:
    """What a hint adds to a command line for ``method`` (nothing for the default, dmole)."""
    return "" if method == "dmole" else f" --method {method}"


@dataclass
class TrainRun:
    """One train-task run as a method sees it; ``carried`` holds what the method read from earlier tasks."""

    project: Project
    method: str
    task: str  # the task (or JOINT_TASK) the artifact is written for
    task_id: int  # its position in the sequence: the adapter's id
    spec: TaskSpec | None  # None when training on every task at once
    samples: list[TrainSample]
    options: TrainTaskOptions
    hyper: BaseModel
    stage: str  # the artifact stage, e.g. ``lwf-lora.train-task``
    carried: dict[str, Any] = field(default_factory=dict)
    # training on every task at once: task -> its spec and how many samples (repeated by its epochs) it gave
    union: dict[str, tuple[TaskSpec, int]] | None = None
    # earlier tasks' samples mixed into ``samples`` (after the task's own, in this order): task -> its buffer
    replayed: dict[str, list[TrainSample]] = field(default_factory=dict)


class Trainer:
    """What train-task trains: built by a method inside the stage, with the base model loaded.

    The loop calls, per micro-batch: `before` (no gradient, e.g. a teacher's outputs), then the forward under
    `route` (held through backward), then `extra_losses` on the outputs; after the last step, `save`. A method
    changes them by overriding them in its trainer's class (`lora_trainer.LoraTrainer` for most), never by setting
    them on a trainer from outside.
    """

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    run: TrainRun
    adapter: Any
    gradient_hook: Any = None  # a `training.loop.GradientHook` that sees each step's gradients (EWC's Fisher)

    def inputs(self, indices: list[int]) -> dict:
        """The model inputs of the run's samples ``indices``, on the CPU: what the input pipeline builds ahead
        of the step and then moves to the device."""
        from ..training.chat import chat_examples

        return self.adapter.train_inputs(
            chat_examples([self.run.samples[i] for i in indices]), self.run.options.max_length
        )

    # route, before and extra_losses are hooks a method's trainer overrides; the defaults ignore their arguments
    def route(self, indices: list[int], batch: dict) -> AbstractContextManager:  # noqa: ARG002
        return nullcontext()

    def before(self, model: torch.nn.Module, batch: dict, indices: list[int]) -> Any:  # noqa: ARG002
        return None

    def extra_losses(self, model: torch.nn.Module, batch: dict, outputs: Any, before: Any) -> dict[str, torch.Tensor]:  # noqa: ARG002
        """Named loss terms added to the answer cross-entropy (each also logged)."""
        return {}

    def save(self, writer) -> None:
        """Write the trained weights (and anything later tasks carry) into ``writer``."""
        raise NotImplementedError

    def summary(self) -> dict:
        """What the artifact's summary records beside the trainable-parameter count."""
        return {}


@dataclass
class EvalPlan:
    """What one evaluation runs: the model, the tasks it is scored on, and each sample's route.

    ``routes_for(task, samples, options, split)`` gives each sample's expert set (and the router errors behind it,
    or None), ``split`` naming the embeddings that cover ``samples`` ("test", or "train" for RoE trained on the
    model); ``around(routes)`` the context each batch runs in; ``rows(indices)``, inside it, narrows the experts to
    some rows of the batch. Without them nothing is routed.
    """

    model: Any
    tasks: list[str]
    routes_for: Callable[..., tuple[list, np.ndarray | None]] | None = None
    around: Callable[[list], Callable | None] = lambda routes: None
    rows: Callable | None = None


Matrix = list[list[float | None]]


class ContinualMethod:
    """A continual method. Subclasses set the class attributes and implement `carried`, `trainer`, `evaluation`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `dmole methods` and --help
    Hyper: ClassVar[type[Strict]] = NoHyper  # its own hyperparameters, each default with its source
    trains: ClassVar[bool] = True  # zero-shot trains nothing
    allocates: ClassVar[bool] = False  # reads a per-task allocation (D-MoLE and its ablations)
    routes: ClassVar[bool] = False  # routes each test sample by the router bank (threshold sweep)
    allocation_rule: ClassVar[str | None] = None
    # the hyperparameter that sets how strongly it holds on to earlier tasks, and the grid `dmole sweep` tries by
    # default (a decade either side of the source's value)
    sweep_grid: ClassVar[tuple[str, tuple] | None] = None
    # False when its extra loss reads parameters directly rather than the forward's outputs: under FSDP2 the
    # loop trains a sharded copy of the model, which such a term would not see
    shardable: ClassVar[bool] = True

    # ---- the task sequence -------------------------------------------------------------------------------
    def stages_after(self, project: Project) -> list[str]:
        """The tasks train-task and eval run for, in order (one artifact each)."""
        return list(project.config.task_names) if self.trains else []

    def training_tasks(self, project: Project, task: str) -> tuple[list[str], int, TaskSpec | None]:
        """The tasks whose data train-task ``task`` learns, its adapter id, and its registry entry."""
        if not self.trains:
            raise UserError(f"{self.name} trains nothing: evaluate it with `dmole eval --zero-shot`")
        return [task], project.config.task_index(task), project.config.task(task)

    def stage(self, stage: str) -> str:
        return stage_name(stage, self.name)

    def trained(self, project: Project, task: str) -> Version:
        """The train-task artifact of ``task`` (an error with the command to run when it is missing)."""
        return project.store.require(
            self.stage(TRAIN_TASK.name), task, hint=TRAIN_TASK.hint(task) + method_flag(self.name)
        )

    def trained_before(self, project: Project, task_id: int) -> list[Version]:
        return [self.trained(project, name) for name in project.config.task_names[: task_id - 1]]

    # ---- training ----------------------------------------------------------------------------------------
    # replay and carried: hooks a method overrides; the defaults ignore the run
    def replay(self, run: TrainRun) -> dict[str, list[TrainSample]]:  # noqa: ARG002
        """Earlier tasks' samples to mix into the run (task -> its buffer); none but for replay methods."""
        return {}

    def carried(self, run: TrainRun) -> list[Version]:  # noqa: ARG002
        """The artifacts of earlier tasks this run builds on (recorded as its inputs); may fill ``run.carried``. It runs
        before train-task knows whether its result is up to date, so it reads no more than the store: work with those
        artifacts belongs in ``trainer`` (D-MoLE's training partners)."""
        return []

    def trainer(self, run: TrainRun, adapter) -> Trainer:
        raise NotImplementedError

    # ---- evaluation --------------------------------------------------------------------------------------
    def eval_tasks(self, project: Project, after: str) -> list[str]:
        """The tasks the evaluation after ``after`` is scored on."""
        self.check_after(project, after)
        return list(project.config.task_names)

    def check_after(self, project: Project, after: str) -> None:
        if after not in self.stages_after(project):
            if not self.trains:
                raise UserError(f"{self.name} is the base model: evaluate it with `dmole eval --zero-shot`")
            project.config.task(after)  # an unknown task is named as such
            raise UserError(f"{self.name} is evaluated after {', '.join(self.stages_after(project))}, not {after}")

    def eval_inputs(self, project: Project, after: str) -> list[Version]:
        """The artifacts the evaluation after ``after`` reads (default: every trained stage up to it)."""
        return self.trained_before(project, project.config.task_index(after) + 1)

    def evaluation(self, project: Project, after: str, adapter) -> EvalPlan:
        raise NotImplementedError

    # ---- the report --------------------------------------------------------------------------------------
    def matrix(self, zero: list[float | None], rows: dict[str, list[float | None]], names: list[str]) -> Matrix | None:
        """The continual matrix R (row 0: zero-shot; row t: after task t) from the zero-shot row and this
        method's evaluations (``rows``: after -> scores per task); None when it has no evaluation yet."""
        if not rows:
            return None
        return [zero] + [rows.get(name, [None] * len(names)) for name in names]
