"""Replay (experience replay): task t trains on its own data mixed with a buffer of every earlier task's training
samples; and D-MoLE + replay, D-MoLE trained on the same mixture.

MCITlib's Replay (Ghy0501/MCITlib v3, LLaVA/Replay/scripts/MCITlib/Train/Taskn.sh) continues the previous task's
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
    replay: float = Field(default=20, gt=0, description="buffer size per earlier task: a fraction of its training "
                                                        "samples (below 1) or a count (a whole number; MLLM-CL's "
                                                        "replay files: 20)")
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


def replay_buffers(run: TrainRun) -> dict[str, list]:
    """Per earlier task of the sequence, in order, its buffer: a seeded draw without replacement from its training
    samples (each line once, whatever its ``repeat``)."""
    from ..data.tasks import load_train_samples

    project, hyper = run.project, run.hyper
    buffers = {}
    for name in project.config.task_names[:run.task_id - 1]:
        samples = load_train_samples(project.data_root, project.config.task(name))
        chosen = random.Random(f"{hyper.replay_seed}-replay-{name}").sample(range(len(samples)),
                                                                             buffer_size(hyper.replay, len(samples)))
        buffers[name] = [samples[i] for i in sorted(chosen)]
    return buffers


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
