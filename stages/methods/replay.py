"""Replay (experience replay): task t trains on its own data mixed with a buffer of every earlier task's training
samples; and D-MoLE + replay, D-MoLE trained on the same mixture.

MCITlib's Replay (MCITlib v3 as mirrored in zackschen/MCITlib-Train at 4e92f7b,
``LLaVA/Replay/scripts/MCITlib/Train/Taskn.sh``) continues the previous task's
LoRA (``--previous_task_model_path``) on ``replay_path``, a file that mixes the current task with samples of the
earlier ones, drawn once at random. Those files come from MLLM-CL (bjzhb666/MLLM-CL, README "data" layout:
``replay20.json``, ``task5replay20_train.json``, ``num5sample_images20/``), 20 samples per earlier task: the default
size here. The buffer is drawn here, per earlier task and seeded by the task's name, so task k's buffer is the same
at every later task, as one replay file is; the run records it (train-task's summary ``replay``: task -> sample ids).
"""

from __future__ import annotations

import random

from pydantic import Field, field_validator

from ..config import Strict
from .base import LoraHyper, TrainRun
from .continued import ContinuedLora
from .dmole import DMoLE, DMoLEHyper


class ReplayFields(Strict):
    replay: float = Field(
        default=20,
        gt=0,
        description="buffer size per earlier task: a fraction of its training "
        "samples (below 1) or a count (a whole number; MLLM-CL's "
        "replay files: 20)",
    )
    replay_seed: int = Field(default=42, description="seed of the buffer draw (with each task's name)")

    @field_validator("replay")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value >= 1 and not float(value).is_integer():
            raise ValueError(f"replay {value} is neither a fraction below 1 nor a whole count")
        return value


def buffer_size(replay: float, available: int) -> int:
    """How many of an earlier task's ``available`` samples its buffer holds: a fraction of them (at least one),
    or a count (all of them when it has fewer)."""
    return min(available, max(1, round(replay * available)) if replay < 1 else int(replay))


def task_buffers(project, names: list[str], size: float, seed: int) -> dict[str, list]:
    """Per task of ``names``, in order, its buffer of ``size`` (`buffer_size`): a draw without replacement from its
    training samples (each line once, whatever its ``repeat``), seeded by ``seed`` and the task's name."""
    from ..data.tasks import load_train_samples

    buffers = {}
    for name in names:
        samples = load_train_samples(project.data_root, project.config.task(name))
        chosen = random.Random(f"{seed}-replay-{name}").sample(range(len(samples)), buffer_size(size, len(samples)))
        buffers[name] = [samples[i] for i in sorted(chosen)]
    return buffers


def replay_buffers(run: TrainRun) -> dict[str, list]:
    """Every earlier task's buffer, by the run's ``replay`` and ``replay_seed``."""
    return task_buffers(
        run.project, run.project.config.task_names[: run.task_id - 1], run.hyper.replay, run.hyper.replay_seed
    )


class ReplayHyper(LoraHyper, ReplayFields):
    pass


class Replay(ContinuedLora):
    name = "replay"
    summary = "Replay: one LoRA continued, each task mixed with a seeded buffer of every earlier task's samples"
    Hyper = ReplayHyper

    def replay(self, run: TrainRun) -> dict[str, list]:
        return replay_buffers(run)


class DMoLEReplayHyper(DMoLEHyper, ReplayFields):
    pass


class DMoLEReplay(DMoLE):
    """D-MoLE on each task's data mixed with the replay buffer; a replayed sample is routed in training like the
    task's own, by the routers on its embedding (from its own task's ``embed``). Its allocation is its own
    (``dmole allocate --method dmole-replay``), by D-MoLE's rule."""

    Hyper = DMoLEReplayHyper

    def __init__(self):
        super().__init__("dmole")
        self.name = "dmole-replay"
        self.summary = "D-MoLE + replay: D-MoLE trained on each task mixed with the replay buffer"

    def replay(self, run: TrainRun) -> dict[str, list]:
        return replay_buffers(run)


METHODS = [Replay(), DMoLEReplay()]
