"""Every continual metric of one run, and the mean and standard deviation of each over several runs (seeds, task
orders).

A run's metrics are computed from its own matrix R, whose columns follow the run's task order (``continual.py``,
``field_continual.py``); only the per-task scores are matched across runs, by task name. The standard deviation
is the sample one (ddof = 1: the runs are a sample of the seeds and orders that could have been drawn), None for
a single run. A value any run lacks has no mean (as in ``continual.py``: no mean over what is there).
"""

from statistics import fmean, stdev

from .continual import Matrix, continual_metrics
from .field_continual import field_metrics

CONTINUAL_KEYS = ("last", "avg_seen", "avg_all", "bwt", "fwt")


def run_metrics(R: Matrix) -> dict[str, float | None]:
    """Last, AVG (seen, all), BWT, FWT and the field's metrics, flat: ``last``, ..., ``mcitlib.mft``,
    ``coinpp.average_forgetting``, ``continual_next.forgetting`` (the per-task forgetting table left out)."""
    ours = continual_metrics(R)
    field = field_metrics(R)
    return {
        **{key: ours[key] for key in CONTINUAL_KEYS},
        **{
            f"{toolkit}.{key}": value
            for toolkit, values in field.items()
            if toolkit != "forgetting_table"
            for key, value in values.items()
        },
    }


def mean_std(values: list[float | None]) -> dict:
    """``{"mean", "std", "runs"}`` of ``values``: the sample standard deviation (ddof = 1), None for one value;
    both None when a value is missing."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "runs": len(values)}
    return {"mean": fmean(values), "std": stdev(values) if len(values) > 1 else None, "runs": len(values)}


def spread(runs: list[dict[str, float | None]]) -> dict[str, dict]:
    """Per key of the first run's values, `mean_std` over ``runs``."""
    return {key: mean_std([run[key] for run in runs]) for key in runs[0]}
