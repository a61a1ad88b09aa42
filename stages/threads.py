"""How many CPU threads torch computes with: the cores that are idle when a stage loads its model.

torch's default, one thread per core with OpenMP threads that spin while they wait, is fastest on an idle
machine and several times slower when another job shares the cores: both jobs' threads then oversubscribe
them (docs/benchmarks.md, "On a shared CPU"). So before each model load dmole samples the kernel's CPU
counters for a moment and uses as many threads as there are idle cores, at least one. The sample is short
and current: a shell loop's previous stage, which has exited, does not count as a competitor the way the
load average (a minute's decaying mean) would count it.

An explicit setting wins: ``DMOLE_THREADS=N``, or ``OMP_NUM_THREADS`` (then torch's own reading of it stands).
Where the counters cannot be read (no ``/proc/stat``: macOS, Windows) torch's default stands.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

SAMPLE_SECONDS = 0.05  # five jiffies per core: enough to round to whole idle cores
PROC_STAT = Path("/proc/stat")


def _parse(text: str) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs together, from the first line of /proc/stat."""
    values = [int(v) for v in text.splitlines()[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def _cpu_times(stat: Path) -> tuple[int, int] | None:
    try:
        return _parse(stat.read_text(encoding="ascii"))
    except (OSError, IndexError, ValueError):
        return None


def idle_cores(seconds: float = SAMPLE_SECONDS, stat: Path = PROC_STAT) -> float | None:
    """How many of the machine's cores were idle over the next ``seconds``; None where that cannot be read."""
    before = _cpu_times(stat)
    time.sleep(seconds)
    after = _cpu_times(stat)
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def choose_threads(env: Mapping[str, str] = os.environ, idle: float | None = None) -> int | None:
    """The thread count to set, or None to leave torch's. ``idle`` (default: sampled now) is in cores."""
    if "DMOLE_THREADS" in env:
        text = env["DMOLE_THREADS"]
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"DMOLE_THREADS must be a positive whole number, not {text!r}")
        return int(text)
    if "OMP_NUM_THREADS" in env:
        return None
    idle = idle_cores() if idle is None else idle
    if idle is None:
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, round(idle)))


def use_idle_cores() -> None:
    """Set torch's thread count by `choose_threads`."""
    import torch

    threads = choose_threads()
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


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
