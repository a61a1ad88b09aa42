"""Resumable training state: trainable tensors, optimizer, step, RNG and the log so far.

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

    def restore(self, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
        """Copy the saved tensors and optimizer state back; return the step to continue from."""
        saved = self.payload["params"]
        if set(saved) != set(trainable):
            raise RuntimeError("the checkpoint does not match this run's trainable parameters")
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(saved[name])
        optimizer.load_state_dict(self.payload["optimizer"])
        random.setstate(_python_state(self.payload["python_rng"]))
        torch.set_rng_state(self.payload["torch_rng"])
        return int(self.payload["step"])


def _python_state(saved: list) -> tuple:
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def save_checkpoint(directory: Path, step: int, trainable: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, log: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    version, internal, gauss = random.getstate()
    payload = {"step": step, "params": {k: v.detach().clone() for k, v in trainable.items()},
               "optimizer": optimizer.state_dict(), "python_rng": [version, list(internal), gauss],
               "torch_rng": torch.get_rng_state(), "log": log}
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
