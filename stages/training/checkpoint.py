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

CHECKPOINT = "checkpoint.pt"


@dataclass
class LoadedState:
    payload: dict

    @property
    def log(self) -> list[dict]:
        return list(self.payload["log"])

    def restore(self, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                rank: int = 0, world: int = 1) -> int:
        """Copy the saved tensors and optimizer state back, and this process's RNG; return the step to continue
        from. Resumed with another number of processes, every process takes the first one's RNG (the run then
        differs from an uninterrupted one in its dropout draws)."""
        saved = self.payload["params"]
        if set(saved) != set(trainable):
            raise RuntimeError("the checkpoint does not match this run's trainable parameters")
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(saved[name])
        optimizer.load_state_dict(self.payload["optimizer"])
        states = self.payload["rng"]
        set_rng_state(states[rank] if len(states) == world else states[0])
        return int(self.payload["step"])


def rng_state() -> dict:
    """This process's random state: Python's, torch's CPU generator and every CUDA device's."""
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, step: int, trainable: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, log: list[dict], rng: list[dict]) -> None:
    """Write the state atomically; ``rng`` holds every process's `rng_state`, in rank order."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"step": step, "params": {k: v.detach().clone() for k, v in trainable.items()},
               "optimizer": optimizer.state_dict(), "rng": rng, "log": log}
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
