"""Continual-learning metrics over the stage × task score matrix (spec §11).

R[t][i] is the score (0-100) on task i+1 after stage t; row 0 is zero-shot and rows
1..T follow the stages. A missing cell is None; a value that needs one is None.
"""

from . import MetricError

Matrix = list[list[float | None]]


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values, or None if any is missing or there are none."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def _diff(a: float | None, b: float | None) -> float | None:
    """a − b, or None if either is missing."""
    return None if a is None or b is None else a - b


def _check(R: Matrix) -> int:
    """Validate the shape of R and return T."""
    T = len(R) - 1
    if T < 1 or any(len(row) != T for row in R):
        raise MetricError("R needs rows 0..T of T scores each, with T ≥ 1")
    return T


def continual_metrics(R: Matrix) -> dict:
    """last, avg_seen, avg_all, bwt and fwt (aggregates) plus `per_task` lists."""
    T = _check(R)
    tasks = range(1, T + 1)

    def cell(t: int, i: int) -> float | None:
        """R[t, i] with the spec's 1-based task index."""
        return R[t][i - 1]

    per_task = {
        "last": [cell(T, i) for i in tasks],
        "avg_seen": [_mean([cell(t, i) for t in range(i, T + 1)]) for i in tasks],
        "avg_all": [_mean([cell(t, i) for t in tasks]) for i in tasks],
        "bwt": [_diff(cell(T, i), cell(i, i)) if i < T else None for i in tasks],
        "fwt": [_diff(cell(i - 1, i), cell(0, i)) if i > 1 else None for i in tasks],
    }
    seen_rows = [_mean([cell(t, i) for i in range(1, t + 1)]) for t in tasks]
    return {
        "last": _mean(per_task["last"]),
        "avg_seen": _mean(seen_rows),
        "avg_all": _mean(per_task["avg_all"]),
        "bwt": _mean(per_task["bwt"][:-1]),
        "fwt": _mean(per_task["fwt"][1:]),
        "per_task": per_task,
    }
