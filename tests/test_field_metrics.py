"""The field's continual metrics (stages/metrics/field_continual.py) on hand-worked matrices."""

import pytest

from dmole.stages.metrics.continual import continual_metrics
from dmole.stages.metrics.field_continual import (
    coinpp_metrics,
    continual_next_metrics,
    field_metrics,
    forgetting_table,
    mcitlib_metrics,
)

# Row 0 is zero-shot; rows 1..3 follow the three stages.
R = [
    [10, 20, 30],
    [80, 25, 35],
    [70, 90, 40],
    [75, 60, 85],
]
# Task 1 ends above every earlier score: CoIN++ counts no forgetting, Continual-NExT a gain.
RECOVERED = [
    [10, 20, 30],
    [80, 25, 35],
    [70, 90, 40],
    [95, 60, 85],
]


def test_mcitlib_by_hand():
    m = mcitlib_metrics(R)
    assert m["mft"] == pytest.approx((80 + 90 + 85) / 3)
    assert m["mfn"] == pytest.approx((75 + 60 + 85) / 3)
    assert m["maa"] == pytest.approx((80 + (70 + 90) / 2 + (75 + 60 + 85) / 3) / 3)
    assert m["bwt"] == pytest.approx(((75 - 80) + (60 - 90)) / 2)


def test_mcitlib_agrees_with_dmoles_own_names():
    """MFN is Last, MAA is AVG over seen tasks, BWT is BWT: the same numbers under the field's names."""
    own, m = continual_metrics(R), mcitlib_metrics(R)
    assert (m["mfn"], m["maa"], m["bwt"]) == pytest.approx((own["last"], own["avg_seen"], own["bwt"]))


def test_coinpp_forgetting_by_hand():
    assert coinpp_metrics(R)["average_forgetting"] == pytest.approx(((80 - 75) + (90 - 60)) / 2)
    # max over stages 1..3 of task 1 is its final 95: no forgetting, not a negative one
    assert coinpp_metrics(RECOVERED)["average_forgetting"] == pytest.approx((0 + (90 - 60)) / 2)


def test_continual_next_by_hand():
    m = continual_next_metrics(R)
    assert m["avg_acc"] == pytest.approx((75 + 60 + 85) / 3)
    assert m["new_acc"] == pytest.approx((80 + 90 + 85) / 3)
    assert m["forgetting"] == pytest.approx(((75 - 80) + (60 - 90)) / 2)
    # the max runs over stages i..T-1, so a final score above all of them counts as a gain
    assert continual_next_metrics(RECOVERED)["forgetting"] == pytest.approx(((95 - 80) + (60 - 90)) / 2)


def test_forgetting_table_rows():
    rows = forgetting_table(
        [
            [0, 0, 0, 0],
            [50, 1, 2, 3],
            [40, 70, 4, 5],
            [60, 65, 30, 6],
            [45, 20, 25, 90],
        ]
    )
    assert [r["acquired"] for r in rows] == [50, 70, 30, 90]
    assert [r["best"] for r in rows] == [60, 70, 30, 90]
    assert [r["best_before_last"] for r in rows] == [60, 70, 30, None]
    assert [r["final"] for r in rows] == [45, 20, 25, 90]
    assert [r["forgetting"] for r in rows] == [15, 50, 5, None]
    assert [r["bwt"] for r in rows] == [-5, -50, -5, None]


def test_missing_cell_gives_none_not_a_partial_mean():
    holed = [row[:] for row in R]
    holed[2][0] = None
    assert coinpp_metrics(holed)["average_forgetting"] is None
    assert continual_next_metrics(holed)["forgetting"] is None
    assert mcitlib_metrics(holed)["maa"] is None
    assert mcitlib_metrics(holed)["mft"] == pytest.approx((80 + 90 + 85) / 3)


def test_single_task_has_no_forgetting():
    m = field_metrics([[20], [60]])
    assert m["mcitlib"] == {"mft": 60, "mfn": 60, "maa": 60, "bwt": None}
    assert m["coinpp"]["average_forgetting"] is None
    assert m["continual_next"] == {"avg_acc": 60, "forgetting": None, "new_acc": 60}
