"""`dmole methods`: the registered continual methods, and one method's hyperparameters."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .common import JsonOption, console, handles_user_errors


@handles_user_errors
def methods(
    show: Annotated[str | None, typer.Option(help="One method: its hyperparameters, defaults and sources.")] = None,
    json_output: JsonOption = False,
) -> None:
    """The continual methods train-task, eval and demo take (--method), in the order of the paper's Table 2.

    A method's hyperparameters are set per run with `train-task --hparam KEY=VALUE`, or for the workspace in
    workspace.json's "methods" section: {"lwf-lora": {"temperature": 1.0}}."""
    from dmole.stages.methods import REGISTRY, get_method

    if show is None:
        rows = [{"name": m.name, "summary": m.summary, "trains": m.trains} for m in REGISTRY.values()]
        if json_output:
            print(json.dumps(rows, indent=2))
            return
        table = Table("method", "what it is", title="continual methods")
        for row in rows:
            table.add_row(row["name"], row["summary"])
        console.print(table)
        return
    method = get_method(show)
    fields = [
        {
            "name": name,
            "type": str(field.annotation).removeprefix("<class '").removesuffix("'>"),
            "default": field.default,
            "description": field.description or "",
        }
        for name, field in method.Hyper.model_fields.items()
    ]
    grid = {"parameter": method.sweep_grid[0], "values": list(method.sweep_grid[1])} if method.sweep_grid else None
    if json_output:
        print(
            json.dumps(
                {"name": method.name, "summary": method.summary, "hyperparameters": fields, "sweep_grid": grid},
                indent=2,
            )
        )
        return
    console.print(f"{method.name}: {method.summary}")
    if grid:
        console.print(f"dmole sweep tries {grid['parameter']} = {', '.join(map(str, grid['values']))} by default")
    table = Table("hyperparameter", "type", "default", "meaning and source", title=f"{method.name} hyperparameters")
    for field in fields:
        table.add_row(field["name"], field["type"], str(field["default"]), field["description"])
    console.print(table if fields else "(no hyperparameters of its own)")


def register(app: typer.Typer) -> None:
    app.command()(methods)
