"""Thread choice: idle cores from the kernel's counters, an explicit setting winning."""

from __future__ import annotations

import os

import pytest

from stages import threads
from stages.errors import UserError

USABLE = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("idle", "expected"), [(0.0, 1), (0.4, 1), (1.6, min(2, USABLE)), (64.0, USABLE)])
def test_threads_follow_the_idle_cores_within_the_usable_ones(idle, expected):
    assert threads.choose_threads({}, idle) == expected


def test_an_explicit_setting_wins():
    assert threads.choose_threads({"DMOLE_THREADS": "3"}, 0.0) == 3
    assert threads.choose_threads({"OMP_NUM_THREADS": "1"}, 8.0) is None  # torch already follows it
    with pytest.raises(UserError, match="DMOLE_THREADS must be a positive whole number"):
        threads.choose_threads({"DMOLE_THREADS": "two"}, None)


def test_idle_cores_from_two_readings_of_the_counters():
    before = threads.Reading(idle=800, total=1000, own=0.0)     # idle+iowait 800 of 1000 jiffies
    after = threads.Reading(idle=1200, total=1700, own=0.0)     # +300 busy, +400 idle of +700
    assert threads.idle_cores(before, after, cores=4) == pytest.approx(4 * 400 / 700)


def test_this_process_own_work_counts_as_idle():
    """A model load keeps one core busy while the sample is taken: that core is ours, not a competitor's."""
    before = threads.Reading(idle=800, total=1000, own=10.0)
    after = threads.Reading(idle=1200, total=1700, own=110.0)   # 100 of the 300 busy jiffies were this process
    assert threads.idle_cores(before, after, cores=4) == pytest.approx(4 * 500 / 700)


def test_the_counters_parse_from_the_kernel_format(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  250 0 250 1100 100 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    reading = threads.read_counters(stat)
    assert (reading.idle, reading.total) == (1200, 1700)


def test_unreadable_counters_leave_torch_alone(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("DMOLE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.read_counters(tmp_path / "missing") is None
    before = torch.get_num_threads()
    torch.set_num_threads(1 if before > 1 else 2)
    expected = torch.get_num_threads()
    try:
        with threads.threads_from_idle_cores(stat=tmp_path / "missing"):
            pass
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_the_count_is_set_after_the_block(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("DMOLE_THREADS", "1" if before > 1 else "2")
    try:
        with threads.threads_from_idle_cores():
            assert torch.get_num_threads() == before
        assert torch.get_num_threads() == int(os.environ["DMOLE_THREADS"])
    finally:
        torch.set_num_threads(before)
