"""The field's continual-learning metrics, from the same stage × task matrix R as ``continual.py``.

R[t][i] is the score (0-100) on task i+1 after stage t; row 0 is zero-shot and rows 1..T follow the stages.
A missing cell is None, and a metric that needs one is None (as in ``continual.py``: no mean over what is there).

Sources (T tasks, A[t][i] = R[t][i] with 1-based t and i):

- MCITlib (Ghy0501/MCITlib v3, the results-summary script's ``compute()`` of each method, e.g. DISCO's UCIT
  summary; the MCITlib paper, arXiv 2508.07307): MFT = mean of the diagonal A[i][i]; MFN = mean of the last
  row A[T][i] over all tasks; MAA = mean over stages t of the mean of A[t][1..t]; BWT = mean over i < T of
  A[T][i] − A[i][i].
- CoIN++ (zackschen/MCITlib-Train, ``scripts/coinpp/score_coinpp.py``, ``continual_metrics``): forgetting of
  task i = max over stages t ≥ i (the last included) of A[t][i], minus A[T][i]; average forgetting = its mean
  over i < T. Never negative.
- Continual-NExT (ECNU-SII/Continual-NExT, README "Evaluation metrics"): Avg.ACC = mean of A[T][i];
  Forgetting = mean over i < T of A[T][i] − max over j in [i, T−1] of A[j][i] (signed: negative when the task
  was forgotten, positive when it ends higher than ever before); New.ACC = mean of A[i][i].
"""

from .continual import Matrix, _check, _diff, _mean


def _max(values: list[float | None]) -> float | None:
    """Largest value, or None if any is missing or there are none."""
    return None if not values or any(v is None for v in values) else max(values)


def forgetting_table(R: Matrix) -> list[dict]:
    """One row per task: acquired (A[i][i]), best (max over stages ≥ i), best_before_last (max over stages
    i..T−1; None for the last task), final (A[T][i]), CoIN++'s forgetting (best − final) and BWT (final −
    acquired); the last two are None for the last task, which no later stage could make it forget."""
    T = _check(R)
    rows = []
    for i in range(1, T + 1):
        trajectory = [R[t][i - 1] for t in range(i, T + 1)]
        final, acquired, best = R[T][i - 1], R[i][i - 1], _max(trajectory)
        rows.append(
            {
                "task": i,
                "acquired": acquired,
                "best": best,
                "best_before_last": _max(trajectory[:-1]) if i < T else None,
                "final": final,
                "forgetting": _diff(best, final) if i < T else None,
                "bwt": _diff(final, acquired) if i < T else None,
            }
        )
    return rows


def mcitlib_metrics(R: Matrix) -> dict:
    """MCITlib's MFT, MFN, MAA and BWT."""
    T = _check(R)
    return {
        "mft": _mean([R[i][i - 1] for i in range(1, T + 1)]),
        "mfn": _mean(R[T]),
        "maa": _mean([_mean(R[t][:t]) for t in range(1, T + 1)]),
        "bwt": _mean([_diff(R[T][i - 1], R[i][i - 1]) for i in range(1, T)]),
    }


def coinpp_metrics(R: Matrix) -> dict:
    """CoIN++'s average forgetting (max over stages from a task's own to the last, minus the last)."""
    rows = forgetting_table(R)
    return {"average_forgetting": _mean([row["forgetting"] for row in rows[:-1]])}


def continual_next_metrics(R: Matrix) -> dict:
    """Continual-NExT's Avg.ACC, Forgetting (signed, max over stages i..T−1) and New.ACC."""
    T = _check(R)
    rows = forgetting_table(R)
    return {
        "avg_acc": _mean(R[T]),
        "forgetting": _mean([_diff(row["final"], row["best_before_last"]) for row in rows[:-1]]),
        "new_acc": _mean([R[i][i - 1] for i in range(1, T + 1)]),
    }


def field_metrics(R: Matrix) -> dict:
    """All of the above, keyed by toolkit, with the per-task forgetting table."""
    return {
        "mcitlib": mcitlib_metrics(R),
        "coinpp": coinpp_metrics(R),
        "continual_next": continual_next_metrics(R),
        "forgetting_table": forgetting_table(R),
    }
