"""The continual matrix R of each method (stages × tasks) with Last, AVG, BWT and FWT beside it.

``result`` is what ``dmole.stages.report.collect`` returns: the task names and, per method, the matrix and metrics.
"""

from __future__ import annotations

from pathlib import Path

from .markdown import fmt
from .markdown import table as md_table
from .style import FONT, colorbar, heatmap, new_figure, save

NAME = "matrix.png"
METRICS = (("last", "Last"), ("avg_seen", "AVG (seen)"), ("avg_all", "AVG (all)"), ("bwt", "BWT"), ("fwt", "FWT"))


def stage_labels(tasks: list[str]) -> list[str]:
    return ["zero-shot", *(f"{t} {name}" for t, name in enumerate(tasks, start=1))]


def protocol(hyper: dict) -> str:
    """How a method's row was run: its sourced defaults, or the hyperparameters the workspace sets."""
    return ", ".join(f"{key}={value}" for key, value in sorted(hyper.items())) or "sourced defaults"


def table2_rows(result: dict, costs: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 2 layout: per method, each task's score after the last stage, then AVG, Last and BWT, and
    the hyperparameters the row ran with; with ``costs`` (the report's cost.json), also each method's training
    time (every train-task run's, summed) and peak memory (the highest)."""
    header = [
        "method",
        *result["tasks"],
        "AVG",
        "Last",
        "BWT",
        *(("train time", "peak memory") if costs else ()),
        "hyperparameters",
    ]
    rows = [
        [
            method,
            *(fmt(v) for v in values["per_task"]["last"]),
            fmt(values["avg_seen"]),
            fmt(values["last"]),
            fmt(values["bwt"]),
            *(_cost(costs[method]) if costs else ()),
            protocol(values["hyper"]),
        ]
        for method, values in result["methods"].items()
    ]
    return header, rows


def _cost(cost: dict) -> tuple[str, str]:
    """Seconds, and MiB with where the peak was measured: the accelerator (GPU) or the process's resident set."""
    seconds, peak = cost["train_seconds"], cost["peak_memory"]
    return (
        "—" if seconds is None else f"{seconds:.0f} s",
        "—" if peak is None else f"{peak['bytes'] / 2**20:.0f} MiB {peak['kind'].upper()}",
    )


def table(result: dict) -> list[str]:
    tasks, methods = result["tasks"], result["methods"]
    lines = [
        "## Table 2: each task after the last stage, AVG, Last, BWT",
        "",
        *md_table(*table2_rows(result)),
        "",
        "## Continual-learning metrics (0-100)",
        "",
        *md_table(
            ["method", *(key for key, _ in METRICS)],
            [[method, *(fmt(values[key]) for key, _ in METRICS)] for method, values in methods.items()],
        ),
        "",
        "## Matrix R (rows: after stage t; row 0: zero-shot)",
        "",
        "![continual matrix R per method](matrix.png)",
        "",
    ]
    for method, values in methods.items():
        lines += [
            f"### {method}",
            "",
            *md_table(
                ["stage", *tasks],
                [[label, *(fmt(v) for v in row)] for label, row in zip(stage_labels(tasks), values["matrix"])],
            ),
            "",
        ]
    return lines


def _caption(values: dict) -> str:
    """Two short lines under the method's name; AVG is the seen-task average."""
    first = f"Last {fmt(values['last'], '.1f')}   AVG {fmt(values['avg_seen'], '.1f')}"
    return f"{first}\nBWT {fmt(values['bwt'], '+.1f')}   FWT {fmt(values['fwt'], '+.1f')}"


def plot(result: dict, path: Path) -> None:
    from matplotlib.patches import Rectangle

    tasks, methods = result["tasks"], result["methods"]
    figure = new_figure(1.2 + 2.6 * len(methods) + 0.6, 1.6 + 0.33 * (len(tasks) + 1))
    axes = figure.subplots(1, len(methods), sharey=True, squeeze=False)[0]
    for ax, (method, values) in zip(axes, methods.items()):
        image = heatmap(
            ax,
            values["matrix"],
            xlabels=tasks,
            ylabels=stage_labels(tasks),
            vmin=0,
            vmax=100,
            label=lambda r, c, v: f"{v:.0f}",
        )
        for t in range(1, len(tasks) + 1):  # the task just trained at each stage
            ax.add_patch(Rectangle((t - 1.5, t - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.2))
        ax.set_title(f"{method}\n{_caption(values)}", fontsize=FONT)
        ax.set_xlabel("evaluated task", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
    axes[0].set_ylabel("after stage", fontsize=FONT)
    above = any(v is not None and v > 100 for values in methods.values() for row in values["matrix"] for v in row)
    colorbar(
        figure,
        image,
        list(axes),
        "score (CIDEr-D can exceed 100)" if above else "score (0-100)",
        extend="max" if above else "neither",
    )
    save(figure, path)
