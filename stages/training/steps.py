"""What one training step of a method's adapter is: the loop's settings for a task (`loop_settings`) and the loss
of a micro-batch, the answer cross-entropy plus the method's extra terms (`step_loss`). Used by train-task and by a
method that trains a second adapter inside its own (MR-LoRA's router)."""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

from ..options import TrainTaskOptions
from .settings import LoopSettings

if TYPE_CHECKING:
    from ..config import TaskSpec


def loop_settings(
    options: TrainTaskOptions, task: TaskSpec | None, union: dict[str, tuple[TaskSpec, int]] | None = None
):
    """The loop's settings for ``task``. A run on the union of tasks (joint; ``union``: task -> its spec and how many
    samples it put in the union, already repeated by its epochs) makes one pass over the union, at the batch size
    of the task with the most samples in it."""

    epochs, batch = options.epochs_for(task), options.batch_for(task)
    if union:
        epochs, batch = 1.0, options.batch_for(max(union.values(), key=lambda entry: entry[1])[0])
    shared = {f.name for f in fields(LoopSettings)} & set(TrainTaskOptions.model_fields) - {"epochs", "batch_size"}
    return LoopSettings(epochs=epochs, batch_size=batch, **options.model_dump(include=shared))


def step_loss(trainer):
    """The loop's loss function: the answer cross-entropy of a micro-batch (its inputs built by the input
    pipeline, `trainer.inputs`) plus the method's extra terms."""
    import torch

    from .chat import supervised_tokens

    def loss_fn(prepared, indices: list[int], scope, batch: dict) -> dict:
        before = trainer.before(prepared, batch, indices)
        # held through backward: gradient checkpointing re-runs the routed layers there
        scope.enter_context(trainer.route(indices, batch))
        outputs = prepared(**batch)
        logged = {"loss": outputs.loss, "count": supervised_tokens(batch["labels"])}
        for name, term in trainer.extra_losses(prepared, batch, outputs, before).items():
            term = torch.as_tensor(term, dtype=outputs.loss.dtype, device=outputs.loss.device)
            logged["loss"] = logged["loss"] + term
            logged[name] = term
        return logged

    return loss_fn
