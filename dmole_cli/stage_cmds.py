"""The per-task stage commands: each opens the workspace and calls one stage function with the options the user
set. Every stage option's flag is generated from its model in `stages/options.py` (`options_cli.stage_flags`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import (ForceOption, QuietOption, WorkspaceOption, handles_user_errors, open_project,
                     print_summary)
from .options_cli import stage_flags
from .progress import rich_progress

TaskOption = Annotated[str, typer.Option("--task", "-t", help="Task name (see `dmole tasks`).")]


@handles_user_errors
@stage_flags("embed")
def embed(task: TaskOption, options: dict, force: ForceOption = False, quiet: QuietOption = False,
          workspace: WorkspaceOption = None) -> None:
    """Sequence representation (frozen base, no experts) of the task's train and test samples, to Parquet."""
    from stages.embed import embed as run

    print_summary(run(open_project(workspace), task, options, force=force, progress=rich_progress(quiet)))


@handles_user_errors
@stage_flags("fit-router")
def fit_router(task: TaskOption, options: dict, force: ForceOption = False, workspace: WorkspaceOption = None) -> None:
    """Fit the task's autoencoder router on its training embeddings and set its threshold."""
    from stages.fit_router import fit_router as run

    print_summary(run(open_project(workspace), task, options, force=force))


@handles_user_errors
@stage_flags("zc-score")
def zc_score(task: TaskOption, options: dict, force: ForceOption = False, workspace: WorkspaceOption = None) -> None:
    """Zero-cost proxy: gradient norm of every candidate module of both towers on the frozen base."""
    from stages.zc_score import zc_score as run

    print_summary(run(open_project(workspace), task, options, force=force))


@handles_user_errors
@stage_flags("allocate")
def allocate(task: TaskOption, options: dict, force: ForceOption = False, workspace: WorkspaceOption = None) -> None:
    """Choose the task's expert modules: budget split between towers by gradient share (vision >= 25%).

    --method takes dmole or one of its ablations, each a named method with its own artifacts: dmole-vision-only,
    dmole-language-only (experts in one tower), dmole-pooled (one ranking over both towers), dmole-uniform (the
    same evenly spread modules for every task)."""
    from stages.allocate import allocate as run

    print_summary(run(open_project(workspace), task, options, force=force))


@handles_user_errors
@stage_flags("train-task")
def train_task(
    task: TaskOption,
    options: dict,
    log_to: Annotated[Optional[str], typer.Option(
        "--log-to", help="Also stream the per-step log to tensorboard or wandb (optional packages).")] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Train the task's adapter for the method (`dmole methods` lists them); resumes automatically.

    A method's own hyperparameters (`dmole methods --show NAME`) are set with --hparam KEY=VALUE."""
    from stages.train_task import train_task as run

    print_summary(run(open_project(workspace), task, options, force=force, progress=rich_progress(quiet),
                      log_to=[log_to] if log_to else []))


@handles_user_errors
@stage_flags("eval")
def eval_(
    options: dict,
    after: Annotated[Optional[str], typer.Option(help="Evaluate the model as it stands after this task.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="Evaluate the base model (row 0).")] = False,
    threshold_scales: Annotated[Optional[str], typer.Option(
        help="D-MoLE threshold sensitivity: evaluate after --after once per comma-separated factor (e.g. "
             "0.5,0.75,1,1.5,2), into one threshold-sweep artifact that the report tabulates.")] = None,
    roe: Annotated[bool, typer.Option("--roe", help="Evaluate the latest route-train weights: dense versus RoE, "
                                                    "skip statistics (stage roe-eval; takes only --batch-size).")]
    = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Evaluate on the test split of every task (seen and unseen), greedy decoding, each family's metric."""
    from stages.errors import UserError
    from stages.evaluate import ZERO_SHOT, evaluate as run

    if roe:
        from .roe_cmds import run_roe_eval

        run_roe_eval(workspace, batch_size=options.get("batch_size"), force=force, quiet=quiet)
        return
    if zero_shot == (after is not None):
        raise UserError("give exactly one of --after TASK or --zero-shot")
    project = open_project(workspace)
    if threshold_scales is not None:
        from stages.evaluate import threshold_sweep

        if after is None:
            raise UserError("--threshold-scales sweeps the model after one task: give --after TASK")
        try:
            scales = [float(part) for part in threshold_scales.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--threshold-scales takes comma-separated numbers, got {threshold_scales!r}") from None
        print_summary(threshold_sweep(project, after, scales, options, force=force, progress=rich_progress(quiet)))
        return
    print_summary(run(project, ZERO_SHOT if zero_shot else after, options, force=force, progress=rich_progress(quiet)))


@handles_user_errors
@stage_flags("sweep")
def sweep(options: dict, force: ForceOption = False, quiet: QuietOption = False,
          workspace: WorkspaceOption = None) -> None:
    """Run a method's whole sequence at each value of one hyperparameter and select the value on the tasks'
    validation sets (`val` in the registry), never the test sets.

    Each value trains in a scratch workspace of its own; the artifact holds every value's test matrix and validation
    scores and the selected value (`dmole show sweep --task METHOD`). Example: dmole sweep --method lwf-lora --grid
    weight=0.1,1,10 (without --grid: the method's own, `dmole methods --show METHOD`); --hparam parity=true fixes a
    hyperparameter at every value."""
    from stages.sweep import sweep as run

    project = open_project(workspace)
    print_summary(run(project, options, force=force, progress=rich_progress(quiet)))


def register(app: typer.Typer) -> None:
    app.command()(embed)
    app.command("fit-router")(fit_router)
    app.command("zc-score")(zc_score)
    app.command()(allocate)
    app.command("train-task")(train_task)
    app.command("eval")(eval_)
    app.command()(sweep)
