"""The training loop's input pipeline: every micro-batch's model inputs, built ahead of the step.

The loop knows its whole schedule of micro-batches before the first step, so their inputs (image decoding, the
processor, the chat template, tokenization) can be built in DataLoader worker processes while the model trains,
then pinned (on CUDA) and moved to the device. The batches and their order are the schedule's; with no workers
they are built inline, on the training thread, exactly as before. Workers never touch the training process's
random state: the loader draws its worker seeds from its own generator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

Inputs = dict[str, torch.Tensor]
PREFETCH = 2  # micro-batches each worker keeps ready
GPU_WORKERS = 2


def worker_count(requested: int | None) -> int:
    """The option's value, or by default 2 workers beside a GPU and none on a CPU, where they would take the
    cores the step computes on."""
    return requested if requested is not None else GPU_WORKERS if torch.cuda.is_available() else 0


class _Schedule(Dataset):
    def __init__(self, micros: Sequence[list[int]], build: Callable[[list[int]], Inputs]) -> None:
        self.micros, self.build = micros, build

    def __len__(self) -> int:
        return len(self.micros)

    def __getitem__(self, k: int) -> Inputs:
        return self.build(self.micros[k])


@dataclass
class InputPipeline:
    """``build(indices)`` gives one micro-batch's inputs on the CPU, ``move`` puts them on the model's device."""

    build: Callable[[list[int]], Inputs]
    move: Callable[[Inputs], Inputs]
    workers: int = 0
    waited: float = 0.0  # seconds the training thread spent waiting for inputs

    def batches(self, micros: Sequence[list[int]]) -> Iterator[Inputs]:
        """The inputs of ``micros``, in order."""
        if self.workers == 0:
            source: Iterator[Inputs] = (self.build(m) for m in micros)
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fast tokenizers in forked workers
            source = iter(
                DataLoader(
                    _Schedule(micros, self.build),
                    batch_size=None,
                    shuffle=False,
                    num_workers=self.workers,
                    prefetch_factor=PREFETCH,
                    pin_memory=torch.cuda.is_available(),
                    generator=torch.Generator(),
                )
            )
        for _ in micros:
            start = time.perf_counter()
            inputs = next(source)
            self.waited += time.perf_counter() - start
            yield self.move(inputs)
