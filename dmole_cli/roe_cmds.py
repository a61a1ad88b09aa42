"""RoE commands: `route-train`, and the pieces behind `eval --roe` and `show route-train`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from dmole.stages.registry import ROE_SWEEP, ROUTE_TRAIN

from .common import (
    ForceOption,
    JsonOption,
    QuietOption,
    WorkspaceOption,
    console,
    handles_user_errors,
    open_project,
    print_result,
)
from .options_cli import stage_flags
from .progress import rich_progress


@handles_user_errors
@stage_flags(ROUTE_TRAIN)
def route_train(
    options: dict,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.roe_eval import roe_summary
    from dmole.stages.route_train import route_train as run

    project = open_project(workspace)
    result = run(project, options, force=force, progress=rich_progress(quiet or json_output))
    if not (quiet or json_output):
        render_roe_summary(roe_summary(project))
    print_result(result, json_output)


@handles_user_errors
@stage_flags(ROE_SWEEP)
def route_sweep(
    options: dict,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.artifacts.io import read_json
    from dmole.stages.figures.roe_sweep import from_result, table
    from dmole.stages.route_sweep import route_sweep as run

    result = run(open_project(workspace), options, force=force, progress=rich_progress(quiet or json_output))
    if not (quiet or json_output):
        console.print(
            "\n".join(
                table(
                    from_result(
                        read_json(result.version.file(ROE_SWEEP.files.result)),
                        f"{result.stage} v{result.version.number}",
                    )
                )
            ),
            soft_wrap=True,
        )
    print_result(result, json_output)


def run_roe_eval(
    workspace: Path | None, options: dict, *, force: bool = False, quiet: bool = False, json_output: bool = False
) -> None:
    """What `dmole eval --roe` does: evaluate the latest route-train weights, then print their summary."""
    from dmole.stages.roe_eval import evaluate_roe, roe_summary

    project = open_project(workspace)
    result = evaluate_roe(project, options, force=force, progress=rich_progress(quiet or json_output))
    if not json_output:
        render_roe_summary(roe_summary(project))
    print_result(result, json_output)


def show_route_train(workspace: Path | None, json_output: bool = False) -> None:
    """What `dmole show route-train` does: the RoE summary as tables or JSON."""
    from dmole.stages.roe_eval import roe_summary

    summary = roe_summary(open_project(workspace))
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        render_roe_summary(summary)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _met(met: bool) -> tuple[str, str]:
    return ("met", "green") if met else ("missed", "red")


def render_roe_summary(summary: dict) -> None:
    """Skip rate overall and per layer, and dense versus RoE accuracy per task (0–100)."""
    rule = summary["batch_rule_applied"]
    console.print(
        Text.assemble(
            f"RoE ({summary['source']}): realised skip {_pct(summary['skip_rate'])} of routable layers "
            f"(target ρ = {summary['rho']:g}), {_pct(summary['skip_rate_all_layers'])} of all layers; "
            f"batch rule {rule}",
            (" (fallback from gather)" if rule != summary["batch_rule"] else "", "yellow"),
        ),
        soft_wrap=True,
    )
    layers = Table(title="skip rate per layer")
    for layer in range(len(summary["skip_rate_per_layer"])):
        layers.add_column(str(layer), justify="right")
    layers.add_row(
        *(
            _pct(x) if layer in summary["routable_layers"] else "always"
            for layer, x in enumerate(summary["skip_rate_per_layer"])
        )
    )
    console.print(layers)
    runs = [run for run in ("base", "dense", "forced", "roe") if f"{run}_score" in summary]
    if summary["dense_reference"] == "base":
        runs.remove("base")  # the same numbers as dense
    headers = {
        "base": "base",
        "dense": f"dense ({summary['dense_reference']})",
        "forced": "forced-execute",
        "roe": "RoE",
    }
    scores = Table(
        "task",
        *(headers[run] for run in runs),
        "RoE − dense",
        "RoE / dense",
        "skip",
        title="accuracy (0–100): the same model without skipping (dense) versus RoE",
    )
    rows = list(summary["per_task"].items())
    rows.append(("average", summary | {"relative": summary.get("mean_relative")}))
    for name, t in rows:
        relative = t.get("relative")  # reports written before relative scores have none
        scores.add_row(
            name,
            *(f"{t[f'{run}_score']:.2f}" for run in runs),
            f"{t['roe_score'] - t['dense_score']:+.2f}",
            "n/a" if relative is None else f"{relative:.3f}",
            _pct(t["skip_rate"]),
            end_section=name == rows[-2][0],
        )
    console.print(scores)
    saving = summary["theoretical_saving"]
    targets = summary["targets"]
    console.print(
        Text.assemble(
            f"theoretical decoder saving {_pct(saving['decoder_saving'])} (adapter/layer cost "
            f"{saving['adapter_layer_cost_ratio']:.3f}); targets: skip within ±5 points ",
            _met(targets["skip_within_5_points"]),
            ", score drop ≤ 2 ",
            _met(targets["score_drop_at_most_2"]),
        ),
        soft_wrap=True,
    )
    if continual := summary.get("continual"):
        bwt = (
            ""
            if continual["dense_bwt"] is None
            else f"; BWT {continual['dense_bwt']:+.2f} → {continual['roe_bwt']:+.2f}"
        )
        console.print(
            f"continual model ({summary['dense_reference']}), without → with RoE: Last "
            f"{continual['dense_last']:.2f} → {continual['roe_last']:.2f}{bwt}",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    for stage, command in ((ROUTE_TRAIN, route_train), (ROE_SWEEP, route_sweep)):
        app.command(stage.command_line[0], help=stage.help)(command)
