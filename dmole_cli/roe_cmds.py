"""RoE commands: `route-train`, and the pieces behind `eval --roe` and `show route-train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .common import (ForceOption, QuietOption, WorkspaceOption, console, handles_user_errors, open_project,
                     print_summary)
from .progress import rich_progress



@handles_user_errors
def route_train(
    skip_ratio: Annotated[Optional[float], typer.Option(help="ρ: target share of routable layers that easy examples "
                                                             "skip. [default: 0.3]")] = None,
    start: Annotated[Optional[str], typer.Option("--from", help="Train on 'base' (D-MoLE checkpoints: not "
                                                                "supported yet). [default: base]")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the training data. [default: 1]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Examples per optimizer step. [default: 16]")] = None,
    roe_lr: Annotated[Optional[float], typer.Option(help="Router and adapter lr. [default: 4e-4]")] = None,
    backbone_lr: Annotated[Optional[float], typer.Option(help="LLM and projector lr in the joint stage. "
                                                              "[default: 2e-6]")] = None,
    stage2_mode: Annotated[Optional[str], typer.Option(help="Backbone in the joint stage: frozen or full. "
                                                            "[default: full]")] = None,
    stage1_start: Annotated[Optional[float], typer.Option(help="Share of steps before the router warm-up. "
                                                               "[default: 0.3]")] = None,
    stage2_start: Annotated[Optional[float], typer.Option(help="Share of steps before joint tuning. "
                                                               "[default: 0.5]")] = None,
    hinge_weight: Annotated[Optional[float], typer.Option(help="λ, weight of the sparsity hinge. [default: 1]")]
    = None,
    hinge_gamma: Annotated[Optional[float], typer.Option(help="γ in the difficulty weight exp(−γ·CE). "
                                                              "[default: 5]")] = None,
    batch_rule: Annotated[Optional[str], typer.Option(help="Mixed decisions in a batch: gather or or. "
                                                           "[default: gather]")] = None,
    data_fraction: Annotated[Optional[float], typer.Option(help="Seeded share of the training data. [default: 1]")]
    = None,
    max_eval_samples: Annotated[Optional[int], typer.Option(help="First N test samples per task in the closing "
                                                                 "evaluation. [default: all]")] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Train RoE routers and skip adapters on every task's training data (3-stage schedule), then compare
    dense and routed accuracy and report the realised skip rate."""
    from stages.config import stage_options
    from stages.route_train import STAGE, RouteTrainOptions, route_train as run
    from stages.roe_eval import roe_summary

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, RouteTrainOptions, {
        "skip_ratio": skip_ratio, "start": start, "epochs": epochs, "batch_size": batch_size, "roe_lr": roe_lr,
        "backbone_lr": backbone_lr, "stage2_mode": stage2_mode, "stage1_start": stage1_start,
        "stage2_start": stage2_start, "hinge_weight": hinge_weight, "hinge_gamma": hinge_gamma,
        "batch_rule": batch_rule, "data_fraction": data_fraction, "max_eval_samples": max_eval_samples})
    result = run(project, options, force=force, progress=rich_progress(quiet))
    if not quiet:
        render_roe_summary(roe_summary(project))
    print_summary(result)


def run_roe_eval(workspace: Path | None, *, batch_size: int | None = None, batch_rule: str | None = None,
                 max_samples: int | None = None, force: bool = False, quiet: bool = False,
                 json_output: bool = False) -> None:
    """What `dmole eval --roe` does: evaluate the latest route-train weights, then print their summary."""
    from stages.config import stage_options
    from stages.roe_eval import STAGE, RoEEvalOptions, evaluate_roe, roe_summary

    project = open_project(workspace)
    options = stage_options(project.config, STAGE, RoEEvalOptions,
                            {"batch_size": batch_size, "batch_rule": batch_rule, "max_samples": max_samples})
    result = evaluate_roe(project, options, force=force, progress=rich_progress(quiet or json_output))
    if json_output:
        print(json.dumps(roe_summary(project), indent=2))
        return
    render_roe_summary(roe_summary(project))
    print_summary(result)


def show_route_train(workspace: Path | None, json_output: bool = False) -> None:
    """What `dmole show route-train` does: the RoE summary as tables or JSON."""
    from stages.roe_eval import roe_summary

    summary = roe_summary(open_project(workspace))
    if json_output:
        print(json.dumps(summary, indent=2))
    else:
        render_roe_summary(summary)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_roe_summary(summary: dict) -> None:
    """Skip rate overall and per layer, and dense versus RoE accuracy per task (0–100)."""
    rule = summary["batch_rule_applied"]
    fallback = " [yellow](fallback from gather)[/]" if rule != summary["batch_rule"] else ""
    console.print(f"RoE ({summary['source']}): realised skip {_pct(summary['skip_rate'])} of routable layers "
                  f"(target ρ = {summary['rho']:g}), {_pct(summary['skip_rate_all_layers'])} of all layers; "
                  f"batch rule {rule}{fallback}", soft_wrap=True)
    layers = Table(title="skip rate per layer")
    for layer in range(len(summary["skip_rate_per_layer"])):
        layers.add_column(str(layer), justify="right")
    layers.add_row(*(_pct(x) if layer in summary["routable_layers"] else "always"
                     for layer, x in enumerate(summary["skip_rate_per_layer"])))
    console.print(layers)
    runs = [run for run in ("base", "dense", "forced", "roe") if f"{run}_score" in summary]
    if summary["dense_reference"] == "base":
        runs.remove("base")  # the same numbers as dense
    headers = {"base": "base", "dense": f"dense ({summary['dense_reference']})", "forced": "forced-execute",
               "roe": "RoE"}
    scores = Table("task", *(headers[run] for run in runs), "RoE − dense", "skip",
                   title="accuracy (0–100): the same model without skipping (dense) versus RoE")
    rows = list(summary["per_task"].items())
    rows.append(("average", summary))
    for name, t in rows:
        scores.add_row(name, *(f"{t[f'{run}_score']:.2f}" for run in runs),
                       f"{t['roe_score'] - t['dense_score']:+.2f}", _pct(t["skip_rate"]),
                       end_section=name == rows[-2][0])
    console.print(scores)
    saving = summary["theoretical_saving"]
    targets = summary["targets"]
    console.print(f"theoretical decoder saving {_pct(saving['decoder_saving'])} (adapter/layer cost "
                  f"{saving['adapter_layer_cost_ratio']:.3f}); targets: skip within ±5 points "
                  f"{'[green]met[/]' if targets['skip_within_5_points'] else '[red]missed[/]'}, score drop ≤ 2 "
                  f"{'[green]met[/]' if targets['score_drop_at_most_2'] else '[red]missed[/]'}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("route-train")(route_train)
