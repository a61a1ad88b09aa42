"""Live run logging for `--log-to tensorboard|wandb`: every step's log row (loss, learning rates, RoE's skip
rate), as the training loop also keeps it for the artifact's train_log.parquet, sent to TensorBoard or Weights &
Biases. Both packages are optional: asking for one that is not installed is a user error, found before any work.

    with open_loggers(["tensorboard"], log_dir, run_name, config) as loggers:
        train(..., loggers=loggers)
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

TRACKERS = ("tensorboard", "wandb")


def check_available(kinds: Sequence[str]) -> None:
    for kind in kinds:
        if kind not in TRACKERS:
            raise UserError(f"--log-to {kind!r}: choose one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(kind) is None:
            raise UserError(
                f"--log-to {kind} needs the optional {kind} package, which is not installed (pip install {kind})"
            )


def _scalars(row: dict) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "step" and value is not None}


class TensorBoardLogger:
    """Writes each row's scalars as TensorBoard events under ``log_dir``."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def __call__(self, row: dict) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """One W&B run per training stage (project from WANDB_PROJECT, else "dmole"), files under ``log_dir``."""

    def __init__(self, log_dir: Path, run_name: str, config: dict):
        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "dmole"), name=run_name, dir=str(log_dir), config=config
        )

    def __call__(self, row: dict) -> None:
        self.run.log(_scalars(row), step=row["step"])

    def close(self) -> None:
        self.run.finish()


@contextmanager
def open_loggers(
    kinds: Sequence[str], log_dir: Path, run_name: str, config: dict
) -> Iterator[list[Callable[[dict], None]]]:
    """The loggers for ``kinds`` (empty: none), closed (flushed) when the block ends, even on an error."""
    check_available(kinds)
    opened: list[TensorBoardLogger | WandbLogger] = []
    try:
        for kind in kinds:
            opened.append(
                TensorBoardLogger(log_dir) if kind == "tensorboard" else WandbLogger(log_dir, run_name, config)
            )
        yield list(opened)
    finally:
        for logger in opened:
            logger.close()
