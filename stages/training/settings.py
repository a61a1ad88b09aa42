"""The training loop's settings, apart from the loop and torch: a stage hashes them to decide whether its result
is up to date, which must not import torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import TrainTaskOptions


def _train_task_default(name: str):
    """train-task's default for a setting it shares with the loop (stages/options.py), so it is written once."""
    return TrainTaskOptions.model_fields[name].default


@dataclass(frozen=True)
class LoopSettings:
    epochs: float
    batch_size: int
    lr: float
    weight_decay: float = _train_task_default("weight_decay")
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = _train_task_default("warmup_ratio")
    clip: float = _train_task_default("clip")
    seed: int = _train_task_default("seed")
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0 = never
    precision: str = _train_task_default("precision")  # bf16 autocast: "auto" (on CUDA only), "bf16" or "fp32"
    grad_accum: int = _train_task_default("grad_accum")  # micro-batches per optimizer step (per process)
    group_by_length: bool = _train_task_default("group_by_length")  # batches of similar lengths
