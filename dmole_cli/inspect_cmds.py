"""Commands that look at artifacts: `ls` and `show`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from dmole.stages.registry import ROUTE_TRAIN, STAGES

from .common import JsonOption, WorkspaceOption, console, handles_user_errors, labelled, open_project

STATUS_STYLE = {"ok": "green", "stale": "yellow", "tampered": "bold red"}


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@handles_user_errors
def ls(json_output: JsonOption = False, workspace: WorkspaceOption = None) -> None:
    """List the latest artifact of every stage and task: version, creation time, size and status."""
    from dmole.stages.inspect import listing

    rows = listing(open_project(workspace))
    if json_output:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="artifacts")
    for column in ("stage", "task", "version", "created", "size", "status"):
        table.add_column(column, justify="right" if column in ("version", "size") else "left")
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        table.add_row(
            row["stage"],
            row["task"],
            f"v{row['version']}",
            row["created"],
            _size(row["bytes"]),
            Text(row["status"], style=style),
        )
    console.print(table if rows else "no artifacts yet")
    _render_tampered(rows)


def _render_tampered(rows: list[dict]) -> None:
    """What is wrong with each tampered version whose manifest no stage can read, one line each."""
    for row in rows:
        if row.get("problem"):
            where = f"{row['stage']}/{row['task']} v{row['version']}: {row['problem']}"
            console.print(labelled("tampered:", "bold red", where), soft_wrap=True)


def _render_artifact(info: dict) -> None:
    status = info["status"] + (f" ({'; '.join(info['stale_because'])})" if info["stale_because"] else "")
    console.rule(f"{info['stage']} / {info['task']} v{info['version']}")
    console.print(
        f"path: {info['path']}\ncreated: {info['created']}   status: {status}\n"
        f"config hash: {info['config_hash'][:16]}…   inputs: "
        + (", ".join(f"{i['stage']}/{i['task']} v{i['version']}" for i in info["inputs"]) or "none"),
        soft_wrap=True,
    )
    if info["summary"]:
        summary = Table("summary", "value", show_header=False)
        for key, value in info["summary"].items():
            summary.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
        console.print(summary)
    for described in info["tables"]:
        table = Table(*described["columns"], title=f"{described['file']} ({described['rows']} rows)")
        for row in described["head"]:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(table)
        if described["stats"]:
            stats = Table("column", "min", "mean", "max", title="statistics")
            for column, values in described["stats"].items():
                stats.add_row(column, *(f"{values[k]:.4g}" for k in ("min", "mean", "max")))
            console.print(stats)


def _render_confusion(confusion: dict[str, dict[str, int]], scale: float) -> None:
    if not confusion:
        return
    columns = list(next(iter(confusion.values())))
    table = Table(
        "true task \\ routed",
        *columns,
        "own %",
        title=f"routing confusion (held-out test samples, threshold scale {scale:g})",
    )
    for true_task, row in confusion.items():
        total = sum(row.values())
        own = 100 * row.get(true_task, 0) / total if total else 0.0
        table.add_row(true_task, *(str(row[c]) for c in columns), f"{own:.1f}")
    console.print(table)


def _render_quantiles(quantiles: dict[str, dict]) -> None:
    """Each router's threshold against the spread of its in-task training errors."""
    if not quantiles:
        return
    keys = [k for k in next(iter(quantiles.values())) if k not in ("quantile", "threshold")]
    table = Table("task", "q", "τ", *keys, title="router thresholds and in-task training errors")
    for task, row in quantiles.items():
        table.add_row(task, f"{row['quantile']:g}", f"{row['threshold']:.3g}", *(f"{row[k]:.3g}" for k in keys))
    console.print(table)


def _render_allocation(allocation: dict) -> None:
    """Layers x tasks per tower; a cell lists the module kinds holding that task's expert."""
    if not allocation:
        return
    for tower, layers in allocation["towers"].items():
        table = Table("layer", *allocation["tasks"], title=f"experts per layer: {tower} tower")
        for layer, cells in layers.items():
            table.add_row(str(layer), *(",".join(sorted(cells[t])) or "·" for t in allocation["tasks"]))
        console.print(table)


@handles_user_errors
def show(
    stage: Annotated[
        str,
        typer.Argument(
            help=f"Stage name: {', '.join(STAGES)}; another method's as METHOD.STAGE (seq-lora.train-task)."
        ),
    ],
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task (default: every task).")] = None,
    version: Annotated[int | None, typer.Option(help="Version number (default: the latest).")] = None,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Summarise an artifact: manifest, table heads and statistics (fit-router adds the routing confusion,
    allocate the expert map, route-train the skip rates and scores)."""
    from dmole.stages.inspect import describe_stage

    if stage == ROUTE_TRAIN.name:
        from .roe_cmds import show_route_train

        show_route_train(workspace, json_output)
        return
    result = describe_stage(open_project(workspace), stage, task, version)
    if json_output:
        print(json.dumps(result, indent=2, default=str))
        return
    for info in result["artifacts"]:
        _render_artifact(info)
    _render_tampered(result["tampered"])
    _render_quantiles(result.get("quantiles", {}))
    _render_confusion(result.get("confusion", {}), result.get("threshold_scale", 1.0))
    _render_allocation(result.get("allocation", {}))
    for method, rows in result.get("sweeps", {}).items():
        table = Table(*rows[0], title=f"{method}: each value's scores (selected on validation)")
        for row in rows:
            table.add_row(*(("yes" if v else "") if k == "selected" else str(v) for k, v in row.items()))
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command()(show)
