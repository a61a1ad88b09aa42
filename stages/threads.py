"""How many CPU threads torch computes with: a fixed function of the machine, never of its momentary load.

The thread count decides how torch splits its floating-point sums, so it changes the numbers: two demos that
computed with 1 and 2 threads ended 125 CIDEr points apart after training amplified the difference. A
researcher who reruns a command must get the same numbers whatever else the machine is doing, so the count is
the cores this process may use (its CPU affinity), unless set explicitly: ``DMOLE_THREADS=N``, or
``OMP_NUM_THREADS`` (then torch's own reading of it stands). Every manifest records the count as
``cpu_threads``, and a stage whose inputs were computed with another count says so in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from .errors import UserError


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chosen_threads(env: Mapping[str, str] = os.environ) -> int | None:
    """The thread count to set, or None where ``OMP_NUM_THREADS`` already set torch's."""
    if "DMOLE_THREADS" in env:
        text = env["DMOLE_THREADS"]
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"DMOLE_THREADS must be a positive whole number, not {text!r}")
        return int(text)
    if "OMP_NUM_THREADS" in env:
        return None
    return usable_cores()


def set_threads() -> int:
    """Set torch's CPU thread count by `chosen_threads`; returns the count torch now computes with."""
    import torch

    threads = chosen_threads()
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def thread_mismatch(what: str, threads: int, recorded: int | None) -> str | None:
    """One line when ``what`` was computed with another thread count than this run's, else None."""
    if recorded is None or recorded == threads:
        return None
    return (
        f"{what} was computed with {recorded} CPU thread(s) and this run uses {threads}: floating-point sums "
        f"differ with the thread count, so results may differ in the last digits (set DMOLE_THREADS={recorded} "
        "to match)"
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Compute on one thread inside the block: for models so small (a router's autoencoder) that splitting each
    operation across threads costs more in synchronisation than it saves. Results are the same."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
