"""Rich rendering of the continual-learning report."""

from __future__ import annotations

from rich.table import Table

from .common import console

COLUMNS = (("last", "Last"), ("avg_seen", "AVG (seen)"), ("avg_all", "AVG (all)"), ("bwt", "BWT"), ("fwt", "FWT"))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_method_table(version) -> None:
    """Side-by-side metrics per method, then each method's matrix R."""
    from artifacts.io import read_json

    result = read_json(version.file("cl_metrics.json"))
    summary = Table("method", *(title for _, title in COLUMNS), title="continual-learning metrics (0-100)")
    for method, values in result["methods"].items():
        summary.add_row(method, *(_fmt(values[key]) for key, _ in COLUMNS))
    console.print(summary)
    for method, values in result["methods"].items():
        matrix = Table("stage", *result["tasks"], title=f"R: {method}")
        for t, row in enumerate(values["matrix"]):
            matrix.add_row("zero-shot" if t == 0 else f"{t} {result['tasks'][t - 1]}", *(_fmt(v) for v in row))
        console.print(matrix)
