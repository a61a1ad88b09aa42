"""The per-task stage commands: each opens the workspace and calls one stage function with the options the user
set. Each command's name, help and flags come from its stage's declaration (`stages/registry.py`): every option's
flag is generated from the stage's options model (`options_cli.stage_flags`)."""

from __future__ import annotations

from importlib import import_module
from typing import Annotated

import typer

from dmole.stages.registry import (
    ALLOCATE,
    EMBED,
    EVAL,
    FIT_ROUTER,
    GENERAL,
    REPEAT,
    RESCORE,
    ROE_EVAL,
    SWEEP,
    THRESHOLD_SWEEP,
    TRAIN_TASK,
    ZC_SCORE,
)

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
from .options_cli import options_of, stage_flags
from .progress import rich_progress

TaskOption = Annotated[str, typer.Option("--task", "-t", help="Task name (see `dmole tasks`).")]
AfterOption = Annotated[str | None, typer.Option(help="The evaluation of the model as it stands after this task.")]
ZeroShotOption = Annotated[bool, typer.Option("--zero-shot", help="The evaluation of the base model (row 0).")]


def _evaluated(after: str | None, zero_shot: bool) -> str:
    """The evaluation ``--after`` / ``--zero-shot`` name (one of them, exactly)."""
    from dmole.stages.errors import UserError
    from dmole.stages.methods.base import ZERO_SHOT

    if zero_shot == (after is not None):
        raise UserError("give exactly one of --after TASK or --zero-shot")
    return ZERO_SHOT if zero_shot else after


def _progress_command(stage, module: str):
    """The command of a per-task stage that draws progress bars: it calls ``dmole.stages.<module>.<module>``
    (imported when it runs, so that `--help` stays light) with the flags the stage's declaration generates."""

    @handles_user_errors
    @stage_flags(stage)
    def command(
        task: TaskOption,
        options: dict,
        force: ForceOption = False,
        quiet: QuietOption = False,
        json_output: JsonOption = False,
        workspace: WorkspaceOption = None,
    ) -> None:
        run = getattr(import_module(f"dmole.stages.{module}"), module)
        progress = rich_progress(quiet or json_output)
        print_result(run(open_project(workspace), task, options, force=force, progress=progress), json_output)

    return command


embed = _progress_command(EMBED, "embed")
fit_router = _progress_command(FIT_ROUTER, "fit_router")
zc_score = _progress_command(ZC_SCORE, "zc_score")


@handles_user_errors
@stage_flags(ALLOCATE)
def allocate(
    task: TaskOption,
    options: dict,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.allocate import allocate as run

    del quiet  # allocate shows no progress; it takes -q as every stage does
    print_result(run(open_project(workspace), task, options, force=force), json_output)


@handles_user_errors
@stage_flags(TRAIN_TASK)
def train_task(
    task: TaskOption,
    options: dict,
    log_to: Annotated[
        str | None,
        typer.Option("--log-to", help="Also stream the per-step log to tensorboard or wandb (optional packages)."),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.train_task import train_task as run

    progress = rich_progress(quiet or json_output)
    print_result(
        run(open_project(workspace), task, options, force=force, progress=progress, log_to=[log_to] if log_to else []),
        json_output,
    )


@handles_user_errors
@stage_flags(EVAL, ROE_EVAL)
def eval_(
    options: dict,
    after: AfterOption = None,
    zero_shot: ZeroShotOption = False,
    threshold_scales: Annotated[str | None, typer.Option(THRESHOLD_SWEEP.switch, help=THRESHOLD_SWEEP.help)] = None,
    roe: Annotated[bool, typer.Option(ROE_EVAL.switch, help=ROE_EVAL.help)] = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.errors import UserError
    from dmole.stages.evaluate import evaluate as run

    options = options_of(ROE_EVAL if roe else EVAL, options)
    if roe:
        from .roe_cmds import run_roe_eval

        run_roe_eval(workspace, options, force=force, quiet=quiet, json_output=json_output)
        return
    evaluated = _evaluated(after, zero_shot)
    project = open_project(workspace)
    progress = rich_progress(quiet or json_output)
    if threshold_scales is not None:
        from dmole.stages.evaluate import threshold_sweep

        if after is None:
            raise UserError("--threshold-scales sweeps the model after one task: give --after TASK")
        try:
            scales = [float(part) for part in threshold_scales.split(",") if part.strip()]
        except ValueError:
            raise UserError(f"--threshold-scales takes comma-separated numbers, got {threshold_scales!r}") from None
        print_result(threshold_sweep(project, after, scales, options, force=force, progress=progress), json_output)
        return
    print_result(run(project, evaluated, options, force=force, progress=progress), json_output)


@handles_user_errors
@stage_flags(RESCORE)
def rescore(
    options: dict,
    after: AfterOption = None,
    zero_shot: ZeroShotOption = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.rescore import rescore as run

    del quiet  # rescore shows no progress; it takes -q as every stage does
    print_result(run(open_project(workspace), _evaluated(after, zero_shot), options, force=force), json_output)


@handles_user_errors
@stage_flags(SWEEP)
def sweep(
    options: dict,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.sweep import sweep as run

    progress = rich_progress(quiet or json_output)
    print_result(run(open_project(workspace), options, force=force, progress=progress), json_output)


@handles_user_errors
@stage_flags(REPEAT)
def repeat(
    options: dict,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.figures import repeats
    from dmole.stages.repeat import repeat as run

    project = open_project(workspace)
    result = run(project, options, force=force, progress=rich_progress(quiet or json_output))
    if not (quiet or json_output):
        gathered = repeats.gather(project)
        data = {"repeats": [r for r in gathered[0]["repeats"] if r["method"] == result.task]}
        # the figure of the table's image link is drawn by `dmole report`
        console.print("\n".join(line for line in repeats.table(data) if not line.startswith("![")), soft_wrap=True)
    print_result(result, json_output)


@handles_user_errors
@stage_flags(GENERAL)
def general(
    options: dict,
    after: Annotated[
        str | None,
        typer.Option(help="The continual model as it stands after this task (default: the method's last task)."),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    from dmole.stages.figures import general as section
    from dmole.stages.general import general as run

    project = open_project(workspace)
    result = run(project, after, options, force=force)
    if not (quiet or json_output):
        data = {"comparisons": [section.comparison(result.version)]}
        # the figure of the table's image link is drawn by `dmole report`
        console.print("\n".join(line for line in section.table(data) if not line.startswith("![")), soft_wrap=True)
    print_result(result, json_output)


def register(app: typer.Typer) -> None:
    for stage, command in (
        (EMBED, embed),
        (FIT_ROUTER, fit_router),
        (ZC_SCORE, zc_score),
        (ALLOCATE, allocate),
        (TRAIN_TASK, train_task),
        (EVAL, eval_),
        (RESCORE, rescore),
        (SWEEP, sweep),
        (REPEAT, repeat),
        (GENERAL, general),
    ):
        app.command(stage.command_line[0], help=stage.help)(command)
