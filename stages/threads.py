"""How many CPU threads torch computes with: the cores that are idle when a stage loads its model.

torch's default, one thread per core with OpenMP threads that spin while they wait, is fastest on an idle
machine and several times slower when another job shares the cores: both jobs' threads then oversubscribe
them (docs/benchmarks.md, "On a shared CPU"). So while each model loads, dmole samples the kernel's CPU
counters and then uses as many threads as there are idle cores, at least one. The sample is short
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
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

SAMPLE_SECONDS = 0.05  # five jiffies per core at least: enough to round to whole idle cores
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Reading:
    """The kernel's idle and total jiffies of all CPUs together, and this process's own CPU time in jiffies."""
    idle: int
    total: int
    own: float


def _parse(text: str) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs together, from the first line of /proc/stat."""
    values = [int(v) for v in text.splitlines()[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def read_counters(stat: Path = PROC_STAT) -> Reading | None:
    try:
        idle, total = _parse(stat.read_text(encoding="ascii"))
    except (OSError, IndexError, ValueError):
        return None
    return Reading(idle, total, time.process_time() * os.sysconf("SC_CLK_TCK"))


def idle_cores(before: Reading | None, after: Reading | None, cores: int | None = None) -> float | None:
    """How many cores were idle between two readings, this process's own work counted as idle (it is the work
    the threads are for); None where the counters could not be read."""
    if before is None or after is None or after.total <= before.total:
        return None
    cores = cores or os.cpu_count() or 1
    idle = after.idle - before.idle + after.own - before.own
    return min(cores, cores * idle / (after.total - before.total))


def choose_threads(env: Mapping[str, str], idle: float | None) -> int | None:
    """The thread count to set, or None to leave torch's. ``idle`` is in cores."""
    if "DMOLE_THREADS" in env:
        text = env["DMOLE_THREADS"]
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"DMOLE_THREADS must be a positive whole number, not {text!r}")
        return int(text)
    if "OMP_NUM_THREADS" in env or idle is None:
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, round(idle)))


@contextmanager
def threads_from_idle_cores(stat: Path = PROC_STAT) -> Iterator[None]:
    """Measure the idle cores while the block runs (a model load, which has to happen anyway, so the sample
    costs no waiting; at least SAMPLE_SECONDS), then set torch's thread count by `choose_threads`."""
    import torch

    started, before = time.monotonic(), read_counters(stat)
    yield
    time.sleep(max(0.0, SAMPLE_SECONDS - (time.monotonic() - started)))
    threads = choose_threads(os.environ, idle_cores(before, read_counters(stat)))
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
