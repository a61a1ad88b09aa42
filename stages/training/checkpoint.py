"""Resumable training state: trainable tensors, optimizer, step, every process's RNG (Python, torch CPU and every
CUDA device) and the log so far.

Internal state only (never a user-facing artifact), written atomically and read with
``weights_only=True`` so no pickled code ever runs.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

CHECKPOINT = "checkpoint.pt"


@dataclass
class LoadedState:
    payload: dict

    @property
    def log(self) -> list[dict]:
        return list(self.payload["log"])

    @property
    def threads(self) -> int | None:
        """The CPU thread count the interrupted run computed with (None in checkpoints from before it was kept)."""
        return self.payload.get("threads")

    @property
    def step(self) -> int:
        """The optimizer steps done: the step to continue from."""
        return int(self.payload["step"])

    def restore_params(self, trainable: dict[str, torch.nn.Parameter]) -> None:
        """Copy the saved (whole) tensors back into the trainable parameters."""
        saved = self.payload["params"]
        if set(saved) != set(trainable):
            raise RuntimeError("the checkpoint does not match this run's trainable parameters")
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(saved[name])

    def restore_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a `GradientHook`'s saved state back into ``state`` (a checkpoint without it leaves it as it is)."""
        with torch.no_grad():
            for name, saved in self.payload.get("hook_state", {}).items():
                state[name].copy_(saved)

    def optimizer_state(self, *, sharded: bool) -> dict:
        """The optimizer's saved state; a run resumes the way it was written, sharded (FSDP2) or not."""
        if self.payload["sharded"] != sharded:
            how = "with" if self.payload["sharded"] else "without"
            raise UserError(
                f"this run's checkpoint was written {how} FSDP2 sharding: resume it the same way, or "
                "delete its folder under .runs/ to start over"
            )
        return self.payload["optimizer"]

    def restore_rng(self, rank: int = 0, world: int = 1) -> None:
        """This process's random state. Resumed with another number of processes, every process takes the
        first one's (the run then differs from an uninterrupted one in its dropout draws)."""
        states = self.payload["rng"]
        set_rng_state(states[rank] if len(states) == world else states[0])


def rng_state() -> dict:
    """This process's random state: Python's, torch's CPU generator and every CUDA device's."""
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    step: int,
    params: dict[str, torch.Tensor],
    optimizer_state: dict,
    log: list[dict],
    rng: list[dict],
    *,
    sharded: bool = False,
    threads: int | None = None,
    hook_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the state atomically: whole trained tensors, the optimizer's state (keyed by parameter name when
    ``sharded``), the log, ``rng``, every process's `rng_state` in rank order, and a `GradientHook`'s state."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "params": {k: v.detach().clone() for k, v in params.items()},
        "optimizer": optimizer_state,
        "rng": rng,
        "log": log,
        "sharded": sharded,
        "threads": threads,
        "hook_state": {k: v.detach().clone() for k, v in (hook_state or {}).items()},
    }
    tmp = directory / f".{CHECKPOINT}.tmp"
    with tmp.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / CHECKPOINT)


def load_checkpoint(directory: Path) -> LoadedState | None:
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    return LoadedState(torch.load(path, weights_only=True))
