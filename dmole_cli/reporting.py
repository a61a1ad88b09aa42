"""Rich rendering of the continual-learning report: the metric and matrix tables, and where its files are."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .common import console


def print_method_table(version) -> None:
    """Table 2 (each task's final score, AVG, Last, BWT per method), the metrics side by side, then each method's
    matrix R."""
    from dmole.artifacts.io import read_json
    from dmole.stages.figures.markdown import fmt
    from dmole.stages.figures.matrix import METRICS, stage_labels, table2_rows
    from dmole.stages.registry import REPORT

    result = read_json(version.file(REPORT.files.metrics))
    header, rows = table2_rows(result, read_json(version.file(REPORT.files.costs)))
    table2 = Table(*header, title="Table 2: each task after the last stage, AVG, Last, BWT")
    for row in rows:
        table2.add_row(*row)
    console.print(table2)
    summary = Table("method", *(title for _, title in METRICS), title="continual-learning metrics (0-100)")
    for method, values in result["methods"].items():
        summary.add_row(method, *(fmt(values[key]) for key, _ in METRICS))
    console.print(summary)
    for method, values in result["methods"].items():
        matrix = Table("stage", *result["tasks"], title=f"R: {method}")
        for label, row in zip(stage_labels(result["tasks"]), values["matrix"]):
            matrix.add_row(label, *(fmt(v) for v in row))
        console.print(matrix)


def print_report_files(folder: Path, figures: list[str]) -> None:
    """One line: where report.md is and which figures lie beside it."""
    console.print(f"report: {folder / 'report.md'} with {len(figures)} figures ({', '.join(figures)})", soft_wrap=True)
