"""Several processes under an existing launcher (`accelerate launch`, `torchrun`); a plain single process otherwise.

Nothing here starts processes: the launcher sets WORLD_SIZE / RANK and accelerate's PartialState joins the
process group (gloo on CPU, nccl on GPU). Forward-only work is split between processes by accelerate;
each process writes its part to the run's scratch folder and every process reads the parts back in rank
order, so the merged result is the single-process result. A single process never imports accelerate.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from .errors import UserError

T = TypeVar("T")

# What the launcher's settings are recorded as (from `accelerate launch` flags or its --config_file).
LAUNCH_SETTINGS = ("ACCELERATE_", "FSDP_")
NOISE = ("ACCELERATE_DYNAMO_",)


def launched() -> bool:
    """True when a launcher started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@functools.cache
def process_state():
    """accelerate's PartialState; creating it joins the process group."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def rank_and_world() -> tuple[int, int]:
    if not launched():
        return 0, 1
    state = process_state()
    return state.process_index, state.num_processes


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if launched():
        process_state().wait_for_everyone()


def device():
    """This process's device under a launcher (cuda:<local rank> or cpu), else None (the loader decides)."""
    return process_state().device if launched() else None


def all_reduce_sum(tensor):
    """Sum ``tensor`` over processes in place (a no-op in a single process)."""
    if launched():
        import torch

        process_state()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: T) -> list[T]:
    """Every process's ``value`` (picklable), in rank order; ``[value]`` in a single process."""
    if not launched():
        return [value]
    import torch

    out: list = [None] * rank_and_world()[1]
    torch.distributed.all_gather_object(out, value)
    return out


def my_share(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them in a single process)."""
    if not launched():
        return list(items)
    with process_state().split_between_processes(list(items)) as share:
        return list(share)


def launch_settings() -> dict:
    """The launcher's settings as recorded in a manifest: world size, and accelerate/FSDP/DeepSpeed options."""
    _, world = rank_and_world()
    settings = {
        k: v for k, v in sorted(os.environ.items()) if k.startswith(LAUNCH_SETTINGS) and not k.startswith(NOISE)
    }
    recorded = {"world_size": world}
    if launched():
        recorded["distributed_type"] = str(process_state().distributed_type).split(".")[-1]
    if settings:
        recorded["accelerate"] = settings
    return recorded


FSDP2 = "fsdp2"


def parameter_sharding() -> str | None:
    """``FSDP2`` when the launcher asks for FSDP2 (``accelerate launch --use_fsdp --fsdp_version 2``), which the
    training loop shards with; None for whole parameters (DDP, ZeRO-1/2, FSDP NO_SHARD). FSDP1 sharding and
    DeepSpeed ZeRO-3 are refused with the alternative."""
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if env.get("FSDP_VERSION") == "2":
            return FSDP2
        strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
        if strategy not in ("NO_SHARD", "3"):
            raise UserError(
                f"the accelerate config asks for FSDP1 with {strategy}; dmole shards with FSDP2: set "
                "fsdp_version: 2 (accelerate launch --use_fsdp --fsdp_version 2), or use NO_SHARD"
            )
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise UserError(
            "DeepSpeed ZeRO-3 is not supported (it cannot be tested without GPUs here); shard with "
            "FSDP2 instead: accelerate launch --use_fsdp --fsdp_version 2"
        )
    return None


@dataclass
class _Parts:
    folder: Path
    exchanges: int = 0


_current_parts: ContextVar[_Parts | None] = ContextVar("dmole_parts", default=None)


@contextmanager
def parts_folder(folder: Path) -> Iterator[None]:
    """The scratch folder of one stage run's per-process parts: emptied before, removed after a clean run."""
    if not launched():
        yield
        return
    if is_main():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    barrier()
    token = _current_parts.set(_Parts(folder))
    try:
        yield
    finally:
        _current_parts.reset(token)
    barrier()
    if is_main():
        shutil.rmtree(folder, ignore_errors=True)


def _exchange(share: T, write: Callable[[T, Path], None], read: Callable[[Path], T]) -> list[T]:
    parts = _current_parts.get()
    if parts is None:
        raise RuntimeError("merging per-process parts needs a stage run (dmole.stages.runner.run_stage)")
    parts.exchanges += 1
    rank, world = rank_and_world()
    paths = [parts.folder / f"{parts.exchanges:04d}-rank{r}.part" for r in range(world)]
    tmp = paths[rank].with_suffix(".tmp")
    write(share, tmp)
    os.replace(tmp, paths[rank])
    barrier()
    return [read(path) for path in paths]


def _save_array(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _save_records(records: list, path: Path) -> None:
    path.write_text(json.dumps(records))


def merge_rows(share: np.ndarray) -> np.ndarray:
    """Every process's ``my_share`` rows of an array, concatenated in rank order."""
    if not launched():
        return share
    parts = _exchange(share, _save_array, lambda p: np.load(p, allow_pickle=False))
    return np.concatenate([part for part in parts if len(part)])  # a process may get no rows at all


def merge_records(share: list[T]) -> list[T]:
    """Every process's ``my_share`` JSON values (strings, numbers, flat dicts), concatenated in rank order."""
    if not launched():
        return share
    return [record for part in _exchange(share, _save_records, lambda p: json.loads(p.read_text())) for record in part]
