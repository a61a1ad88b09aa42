"""Thread choice: idle cores from the kernel's counters, an explicit setting winning."""

from __future__ import annotations

import os

import pytest

from stages import threads
from stages.errors import UserError

USABLE = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("idle", "expected"), [(0.0, 1), (0.4, 1), (1.6, min(2, USABLE)), (64.0, USABLE)])
def test_threads_follow_the_idle_cores_within_the_usable_ones(idle, expected):
    assert threads.choose_threads({}, idle=idle) == expected


def test_an_explicit_setting_wins():
    assert threads.choose_threads({"DMOLE_THREADS": "3"}, idle=0.0) == 3
    assert threads.choose_threads({"OMP_NUM_THREADS": "1"}, idle=8.0) is None  # torch already follows it
    with pytest.raises(UserError, match="DMOLE_THREADS must be a positive whole number"):
        threads.choose_threads({"DMOLE_THREADS": "two"})


def test_idle_cores_from_two_readings_of_the_counters(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    readings = iter([
        "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 ...\n",   # idle+iowait 800 of 1000
        "cpu  250 0 250 1100 100 0 0 0 0 0\ncpu0 ...\n",  # +300 busy, +400 idle of +700
    ])
    monkeypatch.setattr(threads, "_cpu_times", lambda path: threads._parse(next(readings)))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.idle_cores(seconds=0, stat=stat) == pytest.approx(4 * 400 / 700)


def test_unreadable_counters_leave_torch_alone(tmp_path):
    assert threads.idle_cores(seconds=0, stat=tmp_path / "missing") is None
